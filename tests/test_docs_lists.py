"""Every list of names in the README and the docs equals what the code registers: reward names (`load_reward`),
supported pipeline classes (`srpo_trl.models.ADAPTERS`) and control-word presets. A list is marked in the Markdown
with `<!-- names: KIND -->` ... `<!-- /names -->`; the names are the backticked words between the markers (in a
table, those of the first column, or of column N with `<!-- names: KIND column=N -->`). A name added to the code and not to a list, or the reverse, fails here."""

import glob
import os
import re

import pytest

from srpo_trl.control_words import CONTROL_WORD_PRESETS
from srpo_trl.models import ADAPTERS
from srpo_trl.rewards import reward_names

ROOT = os.path.join(os.path.dirname(__file__), "..")
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def exported_flux_classes() -> set[str]:
    """Every pipeline class the installed diffusers exports whose name starts with Flux or Chroma."""
    import diffusers

    return {n for n in dir(diffusers) if n.endswith("Pipeline") and n.startswith(("Flux", "Chroma"))}


REGISTERED = {
    "rewards": lambda: set(reward_names()),
    "pipelines": lambda: set(ADAPTERS),
    "flux-classes": exported_flux_classes,
    "presets": lambda: set(CONTROL_WORD_PRESETS),
}
LIST = re.compile(r"<!-- names: ([\w-]+)(?: column=(\d+))? -->(.*?)<!-- /names -->", re.DOTALL)


def marked_lists() -> list[tuple[str, str, set[str]]]:
    """`(file, kind, names)` for every marked list in the README and the docs."""
    found = []
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        for kind, column, body in LIST.findall(text):
            names = set()
            for line in body.splitlines():
                if line.startswith("|"):
                    cell = line.split("|")[int(column or 1)]
                    names |= set(re.findall(r"`([^`]+)`", cell))
                else:
                    names |= set(re.findall(r"`([^`]+)`", line))
            found.append((os.path.relpath(path, ROOT), kind, names))
    return found


def test_every_kind_of_list_is_marked_where_users_read_it():
    places = {(path, kind) for path, kind, _ in marked_lists()}
    assert {("README.md", "rewards"), ("README.md", "pipelines"), ("README.md", "presets")} <= places
    assert {("docs/rewards.md", "rewards"), ("docs/models.md", "pipelines"), ("docs/rewards.md", "presets")} <= places


@pytest.mark.parametrize("path, kind, names", marked_lists(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_docs_list_equals_what_the_code_registers(path, kind, names):
    assert kind in REGISTERED, f"{path}: unknown kind of list {kind!r}"
    registered = REGISTERED[kind]()
    assert names == registered, (
        f"{path}'s list of {kind}: missing {sorted(registered - names)}, not registered {sorted(names - registered)}"
    )


def test_the_command_line_helps_list_the_registered_names(capsys):
    from srpo_trl.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))  # argparse wraps lines at hyphens
    assert all(name in text for name in reward_names())
    assert all(f"'{name}'" in text for name in CONTROL_WORD_PRESETS)
