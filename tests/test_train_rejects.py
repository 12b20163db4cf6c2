"""Training never stops for a bad file: the loader drops it, the trainer counts it and lists it in the run folder."""

import json
import subprocess
import sys

from test_train_run import ENV, MAKE_DATA, QUIET, RUN_NAME, train_cmd

from nest_ssl.train.loggers import read_metrics


def test_bad_training_files_are_listed_and_training_goes_on(tmp_path):
    subprocess.run([sys.executable, str(MAKE_DATA), "--num-train", "6", "--num-val", "4", "--min-seconds", "1.5",
                    "--max-seconds", "2"], cwd=tmp_path, check=True, env=ENV, capture_output=True)
    manifest = tmp_path / "data/dummy_ssl/train_manifest.json"
    (tmp_path / "data/dummy_ssl/corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    with open(manifest, "a") as f:
        f.write(json.dumps({"audio_filepath": "missing.wav", "duration": 2.0}) + "\n")
        f.write(json.dumps({"audio_filepath": "corrupt.wav", "duration": 2.0}) + "\n")
    cmd = train_cmd("trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.check_val_every_n_epoch=null",
                    "model.train_ds.batch_size=8",
                    "trainer.log_every_n_steps=1", *QUIET)
    p = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / "nemo_experiments" / RUN_NAME
    lines = (run_dir / "rejected_cuts.tsv").read_text().splitlines()
    rejected = {line.split("\t")[2]: line.split("\t")[3] for line in lines}
    assert len(rejected) == 2, lines  # the two bad cuts (listed again in every epoch that meets them)
    assert all(len(line.split("\t")) == 4 for line in lines)
    reasons = "\n".join(rejected.values())
    assert "missing.wav" in reasons and "corrupt.wav" in reasons, reasons  # each reason names its file
    last = [r for r in read_metrics(run_dir) if "rejected_cuts" in r][-1]
    assert last["rejected_cuts"] == len(lines) and last["global_step"] == 4
