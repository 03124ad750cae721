"""What the Python tools' launchers share: finding the compiled kvsim module."""
import os
import sys


def require_kvsim_module(prog, tools_dir):
    """Makes `import kvsim` reach the compiled module: the .venv's path (tools/build.sh), else
    $KVSIM_BINARY_DIR/python or build/python beside the tools. Not just any package named kvsim:
    tools/kvsim/ (the CLI's sources) would import as an empty namespace package."""
    for build in (os.environ.get("KVSIM_BINARY_DIR"), os.path.join(tools_dir, "..", "build"), None):
        try:
            import kvsim._kvsim  # noqa: F401
            return
        except ImportError:
            sys.modules.pop("kvsim", None)
            if build is None:
                sys.exit(f"{prog}: error: the kvsim Python module is not built (run tools/build.sh)")
            sys.path.insert(0, os.path.join(build, "python"))
