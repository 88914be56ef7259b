import subprocess
import sys


def test_attacks_and_detect_import_with_torch_and_numpy_alone() -> None:
    code = (
        "import sys, monitor.attacks, monitor.detect\n"
        "heavy = {'mlflow', 'sqlalchemy', 'alembic', 'dash', 'sklearn'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
