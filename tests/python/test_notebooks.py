"""Executes notebooks/01_walkthrough.ipynb and 02_paper_claims.ipynb with nbclient (python3
kernel); any cell error fails the test. Each notebook must finish well under a minute."""
import os
import tempfile
import time
import unittest

from test_report_render import SOURCE_DIR, kvsim_cli, sample_trace


def python3_kernel_env():
    """nbclient needs a 'python3' kernelspec. When none is installed, write ipykernel's own into a
    temporary folder and point JUPYTER_PATH at it. Returns the TemporaryDirectory to keep alive."""
    from jupyter_client.kernelspec import KernelSpecManager
    if "python3" in KernelSpecManager().find_kernel_specs():
        return None
    from ipykernel import kernelspec
    tmp = tempfile.TemporaryDirectory()
    kernelspec.install(prefix=tmp.name, kernel_name="python3")
    os.environ["JUPYTER_PATH"] = os.path.join(tmp.name, "share", "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", "")
    return tmp


class NotebookTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        try:
            import nbclient  # noqa: F401
            import nbformat  # noqa: F401
        except ImportError as e:
            raise unittest.SkipTest(f"{e.name} is not installed (tools/install-deps.sh installs python3-nbclient)")
        os.environ["KVSIM_CLI"] = kvsim_cli()
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet ipykernel debugger notes
        sample_trace("niah_stories260k.h5")
        sample_trace("longbench_stories260k.h5")
        cls.kernel_dir = python3_kernel_env()

    @classmethod
    def tearDownClass(cls):
        if cls.kernel_dir is not None:
            cls.kernel_dir.cleanup()

    def run_notebook(self, name):
        import nbclient
        import nbformat
        path = os.path.join(SOURCE_DIR, "notebooks", name)
        nb = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                         resources={"metadata": {"path": os.path.dirname(path)}})
        t0 = time.time()
        client.execute()  # raises CellExecutionError on the first failing cell
        seconds = time.time() - t0
        images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if "image/png" in o.get("data", {}))
        return seconds, images

    def test_01_walkthrough(self):
        seconds, images = self.run_notebook("01_walkthrough.ipynb")
        self.assertGreaterEqual(images, 2, "the plots did not render")
        self.assertLess(seconds, 60)

    def test_02_paper_claims(self):
        seconds, images = self.run_notebook("02_paper_claims.ipynb")
        self.assertGreaterEqual(images, 4, "the plots did not render")
        self.assertLess(seconds, 60)


if __name__ == "__main__":
    unittest.main()
