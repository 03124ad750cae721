"""docs/outputs.md embeds every declared output table as `kvsim columns TABLE --markdown` prints it
(between <!-- columns: FILE ... --> and <!-- /columns -->). Exit 1 naming each table whose section
is missing or differs; with --fix, rewrites the sections in place (new tables are appended)."""
import re
import subprocess
import sys

kvsim, doc = sys.argv[1], sys.argv[2]
fix = "--fix" in sys.argv[3:]
generated = subprocess.run([kvsim, "columns", "--markdown"], check=True, capture_output=True, text=True).stdout
block = re.compile(r"<!-- columns: (\S+) .*?<!-- /columns -->\n", re.S)
want = {m.group(1): m.group(0) for m in block.finditer(generated)}
text = open(doc, encoding="utf-8").read()
have = {m.group(1): m.group(0) for m in block.finditer(text)}
problems = [f"{doc}: the section of {name} is missing" for name in want if name not in have]
problems += [f"{doc}: the section of {name} differs from kvsim columns {name} --markdown"
             for name in want if name in have and have[name] != want[name]]
problems += [f"{doc}: a section for {name}, which is not a declared table" for name in have if name not in want]
if fix and problems:
    text = block.sub(lambda m: want.get(m.group(1), ""), text)
    for name in want:
        if name not in have:
            text += "\n" + want[name]
    open(doc, "w", encoding="utf-8").write(text)
    print(f"{doc}: {len(problems)} sections rewritten")
    sys.exit(0)
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
