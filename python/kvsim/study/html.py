"""report.html of a study: summary.md (the claims beside the papers' numbers, the accuracy table)
and the figures in one self-contained page (images inline, no script, nothing fetched), so it can
be mailed or archived as is. The text is summary.md's: declared once, rendered here."""
import base64
import html
import os
import re

STYLE = """body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:12px}th,td{border:1px solid #ccc;padding:2px 6px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f5f5f5;padding:0 3px}"""


def _inline(text):
    """Markdown inline code (`x`) in escaped text."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(md):
    """The subset summary.md uses: # / ## headings, pipe tables, paragraphs."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            body = [r for r in rows[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body) +
                       "</table>")
            continue
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def write_report_html(summary_md, figures_dir, figures, path):
    with open(summary_md, encoding="utf-8") as f:
        body = markdown_to_html(f.read())
    imgs = []
    for name in figures:
        with open(os.path.join(figures_dir, name), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        imgs.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(name)}</figcaption></figure>")
    title = re.search(r"<h1>(.*?)</h1>", body)
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title.group(1) if title else 'kvsim study'}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n<h2>Figures</h2>\n" + "\n".join(imgs) +
            "\n</body></html>\n")
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(partial, path)
