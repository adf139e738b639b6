"""The training inputs' record format, checked before renting (volt_ansible/datasync/records.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_data_sync import guide_volt_data, make_data

from volt_ansible import datasync
from volt_ansible.datasync import records
from volt_ansible.errors import VoltError

SPEC = yaml.safe_load((REPO / "group_vars/all.yml").read_text())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "VoltData"
    make_data.make(root, scale=0.01, stack_python_mb=0.2, stack_full_mb=0.1)
    return root


def test_the_spec_names_what_each_binary_reads():
    need = records.required(SPEC)
    assert need["data/python_sample.jsonl"] == [("phase03", "codebook-init", "--corpus", ["content", "language"])]
    assert [j for j, *_ in need["data/code_training_combined.jsonl"]] == ["stage1", "stage2", "stage3"]
    assert need["data/apps_competition_train.jsonl"] == [("stage3", "train-vfn", "--data", ["id", "query", "solution", "tests"])]


def test_the_guide_shaped_data_passes(tree: Path, tmp_path: Path):
    report = datasync.preflight(guide_volt_data(tree), tmp_path / "volt", jobs_spec=SPEC)
    assert {i.name for i in report.items} >= {"python_sample", "code_training_combined"}


def test_records_in_another_format_stop_before_renting_in_one_line(tree: Path, tmp_path: Path):
    # the training plan's own recipe writes the corpus as {"content": ...} lines: codebook-init would skip every one
    stack = tree / make_data.STACK_PYTHON
    stack.write_text(json.dumps({"content": "def f():\n    return 1\n"}) + "\n")
    with pytest.raises(VoltError) as e:
        datasync.preflight(guide_volt_data(tree), tmp_path / "volt", jobs_spec=SPEC)
    assert str(e.value) == (f"data item python_sample ({stack}): its records have no language (they have content); codebook-init "
                            "--corpus (job phase03) needs content, language in each: convert the data (or fix input_records in "
                            "group_vars/all.yml)")
    pairs = tree / "phase0/code_training_combined.jsonl"
    pairs.write_text("\n" + json.dumps({"id": "x", "query": "q", "solution": "s"}) + "\n")  # a blank line first: skipped
    stack.write_text("not json\n")
    with pytest.raises(VoltError) as e:
        datasync.preflight(guide_volt_data(tree), tmp_path / "volt", jobs_spec=SPEC)
    # one line per item, the first stage that reads it named; the next problem counted
    assert str(e.value) == (f"data item code_training_combined ({pairs}): its records have no tests (they have id, query, solution); "
                            "train-vfn --data (job stage1) needs id, query, solution, tests in each: convert the data (or fix "
                            "input_records in group_vars/all.yml) (and 1 more problem)")
    pairs.write_text(json.dumps({"id": "x", "query": "q", "solution": "s", "tests": []}) + "\n")
    with pytest.raises(VoltError, match=r"^data item python_sample \(.*\): its first record is not JSON \(Expecting value"):
        datasync.preflight(guide_volt_data(tree), tmp_path / "volt", jobs_spec=SPEC)
    stack.write_text("")
    problems = records.problems(datasync.preflight(guide_volt_data(tree, python_sample={"enabled": False},
                                                                   code_training_combined={"enabled": False}),
                                                   tmp_path / "volt").items, SPEC)
    assert problems == []  # disabled items are not read
    lines = records.problems([datasync.manifest.Item(name="python_sample", src=str(stack), dest="data/python_sample.jsonl",
                                                     kind="file", jobs=["phase03"])], SPEC)
    assert lines == [f"data item python_sample ({stack}): it has no record, but codebook-init --corpus (job phase03) reads JSONL "
                     "records with content, language: fix the file"]
