"""The Python blocks of the README and of docs/evaluation.md are run, so the documented API cannot drift
from the code; the worked examples of docs/evaluation.md assert values computed by hand."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/evaluation.md"])
def test_python_blocks_run(doc):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, doc, "exec"), {})


def test_losses_doc_has_a_row_for_every_registered_loss_and_miner():
    import deepmetric as dm
    doc = (ROOT / "docs" / "losses.md").read_text()
    losses_part, miners_part = doc.split("## Miners")
    row_names = lambda text: set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))  # noqa: E731
    assert row_names(losses_part) == set(dm.losses.names())
    assert row_names(miners_part) == set(dm.mining.names())


def test_evaluation_doc_has_a_row_for_every_index_backend():
    import deepmetric as dm
    doc = (ROOT / "docs" / "evaluation.md").read_text().split("## Indexes")[1]
    assert set(re.findall(r"^\| `([a-z-]+)` \|", doc, flags=re.M)) == set(dm.index.names())


def test_every_submodule_is_reachable_after_a_plain_import():
    # the submodules are imported on first use; deepmetric.functional's were only reachable when
    # something else had imported deepmetric.losses first
    import subprocess
    import sys
    code = ("import deepmetric as dm\n"
            "assert dm.functional.losses.binomial_deviance_loss and dm.functional.mining\n"
            "assert dm.index.create and dm.evaluate and dm.Triplets and dm.training.train and dm.report\n"
            "assert 'losses' in dir(dm)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
