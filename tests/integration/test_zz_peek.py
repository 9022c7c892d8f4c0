from test_bad_input import CASES, inputs  # noqa
from integration_support import run_cli_subprocess
import pytest
@pytest.mark.parametrize("case", list(CASES))
def test_peek(case, inputs, tmp_path):
    r = run_cli_subprocess(*CASES[case][0](inputs)(tmp_path/"o.json"))
    print("\n", case, "|", r.code, "|", r.stderr.strip().splitlines())
