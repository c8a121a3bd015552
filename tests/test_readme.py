"""README code blocks are run, so the documented API cannot drift from the code."""
import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_losses_doc_has_a_row_for_every_registered_loss_and_miner():
    import deepmetric as dm
    doc = (Path(__file__).parents[1] / "docs" / "losses.md").read_text()
    losses_part, miners_part = doc.split("## Miners")
    row_names = lambda text: set(re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M))  # noqa: E731
    assert row_names(losses_part) == set(dm.losses.names())
    assert row_names(miners_part) == set(dm.mining.names())
