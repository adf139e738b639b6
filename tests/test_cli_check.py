"""`volt-ansible check`: the data pre-flight a user runs before renting."""

import json

import yaml


def test_check_names_missing_file_path_and_job(project, tmp_path):
    project.spec(volt_data={"local_root": str(tmp_path / "nothing-here")})
    proc = project.cli("check", check=False)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line
    assert "data item code_tokenizer (needed by phase03, stage1, stage2, stage3)" in line
    assert str(tmp_path / "nothing-here" / "checkpoints/code_tokenizer.json") + " does not exist" in line


def test_check_reports_sizes_and_reuses_cached_digests(project, tmp_path):
    root = tmp_path / "VoltData"
    items = yaml.safe_load((project.root / "group_vars/all.yml").read_text())["volt_data"]["items"]
    for item in items:
        if item["enabled"]:
            p = root / item["src"]
            p.parent.mkdir(parents=True, exist_ok=True)
            # one record shape that every job reading it accepts (input_records: train-vfn's and codebook-init's fields)
            rec = {"id": item["name"], "query": "q", "solution": f"print({item['name']!r})", "tests": [], "content": "c", "language": "py"}
            p.write_text((json.dumps(rec) + "\n") * 50)
    project.spec(volt_data={"local_root": str(root)})
    first = project.cli("check", "--job", "stage1").stdout
    assert "code_training_combined" in first and "python_sample" not in first  # only what stage1 needs
    assert (project.volt_dir / "data-manifest.json").exists()
    again = project.cli("check", "--job", "stage1").stdout
    assert "(25.4 KB hashed now, 0 B from th" in first
    assert "(0 B hashed now, 25.4 KB from th" in again  # digests came from the cache (path+size+mtime)
