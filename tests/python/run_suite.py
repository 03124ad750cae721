"""Runs one Python suite (python -m unittest -v NAME) against the kvsim package installed in this
interpreter's environment, as a user has it, after checking that the installation is this
checkout's current one: the package's Python files equal python/kvsim/ and its extension module is
not older than the one in the build folder. Otherwise it stops with one line saying to run
tools/build.sh (which installs the checkout: pip install .)."""
import filecmp
import glob
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
source = os.environ.get("KVSIM_SOURCE_DIR", os.path.abspath(os.path.join(here, "..", "..")))
binary = os.environ.get("KVSIM_BINARY_DIR", os.path.join(source, "build"))


def stale_reason():
    try:
        import kvsim
    except ImportError as e:
        return f"import kvsim failed ({e})"
    pkg = os.path.dirname(os.path.realpath(kvsim.__file__))
    src = os.path.join(source, "python", "kvsim")
    if pkg.startswith(os.path.join(os.path.realpath(binary), "")) or pkg == os.path.realpath(src):
        return f"kvsim is imported from {pkg}, not from an installed package"
    for folder, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, f), src)
            if not os.path.exists(os.path.join(pkg, rel)) or not filecmp.cmp(os.path.join(src, rel),
                                                                              os.path.join(pkg, rel), shallow=False):
                return f"the installed {rel} differs from python/kvsim/{rel}"
    built = glob.glob(os.path.join(binary, "python", "kvsim", "_kvsim*.so"))
    installed = glob.glob(os.path.join(pkg, "_kvsim*.so"))
    if not installed:
        return "the installed package has no _kvsim extension"
    if built and os.path.getmtime(built[0]) > os.path.getmtime(installed[0]) + 1:
        return f"the installed _kvsim is older than {built[0]}"
    return None


reason = stale_reason()
if reason:
    print(f"kvsim tests: {reason}: run bash tools/build.sh (it installs the checkout into .venv)", file=sys.stderr)
    sys.exit(1)
sys.argv = ["python -m unittest", "-v"] + sys.argv[1:]
unittest.main(module=None)
