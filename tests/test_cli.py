import subprocess
import sys

import theory


def test_module_entry_point_prints_version():
    out = subprocess.run([sys.executable, "-m", "experiments", "--version"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == f"deeplimits {theory.__version__}"


def test_help_describes_the_tool():
    out = subprocess.run([sys.executable, "-m", "experiments", "--help"], capture_output=True, text=True,
                         check=True)
    assert "infinite-width" in out.stdout
