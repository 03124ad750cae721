"""The library's layering, declared once in lib/CMakeLists.txt (kvsim_module(NAME DEPS...)), holds
in the sources: a file of lib/NAME includes only headers of NAME and of the modules NAME depends
on (transitively), never tools/ or python/. Exit 1 with one line per offending include."""
import os
import re
import sys

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", ".."))
lib = os.path.join(root, "lib")
declared = {}
with open(os.path.join(lib, "CMakeLists.txt")) as fh:
    for m in re.finditer(r"kvsim_module\((\w+)([^)]*)\)", fh.read()):
        declared[m.group(1)] = set(re.findall(r"kvsim_(\w+)", m.group(2)))


def closure(name, seen=None):
    seen = set() if seen is None else seen
    for dep in declared.get(name, ()):
        if dep not in seen:
            seen.add(dep)
            closure(dep, seen)
    return seen


problems = [f"lib/{d}: a folder of lib/ that lib/CMakeLists.txt does not declare as a module"
            for d in sorted(os.listdir(lib)) if os.path.isdir(os.path.join(lib, d)) and d not in declared]
for module in sorted(declared):
    allowed = closure(module) | {module}
    for folder, _, files in os.walk(os.path.join(lib, module)):
        for f in sorted(files):
            if not f.endswith((".h", ".cpp")):
                continue
            path = os.path.join(folder, f)
            with open(path) as fh:
                for n, line in enumerate(fh, 1):
                    inc = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
                    if not inc:
                        continue
                    target = inc.group(1)
                    top = target.split("/")[0] if "/" in target else None
                    rel = os.path.relpath(path, root)
                    if top is None:
                        if not os.path.exists(os.path.join(folder, target)):
                            problems.append(f"{rel}:{n}: \"{target}\" is not a header of lib/ (tools/ or python/?)")
                    elif top not in declared:
                        problems.append(f"{rel}:{n}: \"{target}\" is outside the library's modules")
                    elif top not in allowed:
                        problems.append(f"{rel}:{n}: lib/{module} includes {target}, but kvsim_{module} does not "
                                        f"depend on kvsim_{top} (lib/CMakeLists.txt)")
for p in problems:
    print(p)
print(f"layering: {len(declared)} modules, {len(problems)} offending includes", file=sys.stderr)
sys.exit(1 if problems else 0)
