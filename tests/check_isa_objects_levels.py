"""ISA objects define no weak symbol at any optimisation level, not only the build's own.

check_isa_objects.sh inspects the objects of the build folder it runs in (Release: -O3, where
inlining hides most instantiations). Debug (-O0), the sanitizer build (-O1) and RelWithDebInfo
(-O2) instantiate far more inline functions and templates; this recompiles every *_avx2.cpp and
*_avx512.cpp with the build's own command from compile_commands.json at -O0, -O1 and -O2 (into a
temporary folder) and runs the same weak-symbol check on each object.
Usage: check_isa_objects_levels.py BUILD_DIR"""
import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile

build = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(build, "compile_commands.json")) as f:
    entries = [e for e in json.load(f) if re.search(r"_(avx2|avx512)\.cpp$", e["file"])]
if not entries:
    sys.exit(f"check_isa_objects_levels: no ISA files in {build}/compile_commands.json")


def compile_one(entry, level, out_dir):
    """The build's command for one ISA file at `level`, into out_dir/<level>/<name>.cpp.o."""
    args = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    args = [a for a in args if not re.fullmatch(r"-O[0-3sgz]?", a)]
    obj = os.path.join(out_dir, level, os.path.basename(entry["file"]) + ".o")
    args[args.index("-o") + 1] = obj
    args.insert(1, level)
    r = subprocess.run(args, cwd=entry["directory"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"{entry['file']} {level}: compile failed\n{r.stderr[-2000:]}"


levels = ("-O0", "-O1", "-O2")
with tempfile.TemporaryDirectory(prefix="kvsim-isa-levels-") as tmp:
    for level in levels:
        os.makedirs(os.path.join(tmp, level))
    jobs = [(e, level) for level in levels for e in entries]
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        errors = [m for m in pool.map(lambda j: compile_one(j[0], j[1], tmp), jobs) if m]
    if errors:
        sys.exit("\n".join(errors))
    # The weak-symbol check itself is check_isa_objects.sh's (it finds *_avx2.cpp.o / *_avx512.cpp.o).
    r = subprocess.run(["bash", os.path.join(here, "check_isa_objects.sh"), tmp], capture_output=True, text=True)
    sys.stdout.write(r.stdout.replace("ISA objects", f"ISA objects ({len(entries)} files at -O0, -O1, -O2)"))
    sys.stderr.write(r.stderr)
    sys.exit(r.returncode)
