"""LibriLight preparation (nest_ssl.prepare.librilight, `nest-ssl prepare librilight`) on generated corpora.

Real audio is written by local/make_mini_corpus.py, broken files by the tests themselves; lhotse's own recipe is
the reference for ids and fields.
"""

import gzip
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "local"))

from make_mini_corpus import make_corpus  # noqa: E402

from nest_ssl.prepare.librilight import compute_num_samples, prepare_librilight  # noqa: E402


def _lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two speakers x 2 books x 2 files in each of small/ medium/ large/ (lhotse's recipe walks all three)."""
    root = tmp_path_factory.mktemp("librilight")
    make_corpus(str(root), ("small", "medium", "large"), speakers=2, books=2, files=2, min_seconds=6, max_seconds=9,
                seed=3)
    return str(root)


def test_manifests_match_lhotse_recipe_and_keep_json_metadata(corpus, tmp_path):
    from lhotse import CutSet, load_manifest
    from lhotse.recipes.librilight import prepare_librilight as lhotse_prepare

    ours = tmp_path / "ours"
    stats = prepare_librilight(corpus, str(ours), subsets=("small", "medium", "large"), num_jobs=2, chunk_size=3)
    ref = lhotse_prepare(corpus, str(tmp_path / "lhotse"), num_jobs=1)
    for subset in ("small", "medium", "large"):
        assert stats[subset].recordings == 8 and stats[subset].rejected == 0
        recs = load_manifest(ours / f"librilight_recordings_{subset}.jsonl.gz")
        sups = load_manifest(ours / f"librilight_supervisions_{subset}.jsonl.gz")
        ref_recs, ref_sups = ref[subset]["recordings"], ref[subset]["supervisions"]
        # Same ids (<subset>/<speaker>/<book>/<file>, <id>_<k>) and the same values lhotse computes.
        assert sorted(r.id for r in recs) == sorted(r.id for r in ref_recs)
        assert all(r.id.startswith(f"{subset}/") and r.id.count("/") == 3 for r in recs)
        for r in recs:
            ref_r = ref_recs[r.id]
            assert (r.sampling_rate, r.num_samples, r.duration, r.channel_ids) == (
                ref_r.sampling_rate, ref_r.num_samples, ref_r.duration, ref_r.channel_ids)
            assert os.path.samefile(r.sources[0].source, ref_r.sources[0].source)
        assert sorted(s.id for s in sups) == sorted(s.id for s in ref_sups)
        for s in sups:
            ref_s = ref_sups[s.id]
            assert (s.recording_id, s.start, s.duration, s.channel, s.language, s.speaker) == (
                ref_s.recording_id, ref_s.start, ref_s.duration, ref_s.channel, ref_s.language, ref_s.speaker)
        # What lhotse drops and we keep: SNR and the book metadata of the file's JSON.
        s = sups[0] if hasattr(sups, "__getitem__") else next(iter(sups))
        meta = json.load(open(os.path.join(corpus, s.recording_id + ".json")))
        assert s.custom["snr"] == meta["snr"]
        assert s.custom["book_meta"]["meta_genre"] == meta["book_meta"]["meta_genre"]
        assert s.custom["book_meta"]["title"] == meta["book_meta"]["title"]
        assert "description" not in s.custom["book_meta"]
        # The cuts manifest is the join of the two, as lhotse would make it.
        cuts = {c.id: c for c in load_manifest(ours / f"librilight_cuts_{subset}.jsonl.gz")}
        joined = CutSet.from_manifests(recordings=recs, supervisions=sups)
        for c in joined:
            ours_c = cuts[c.recording_id]
            assert ours_c.recording == c.recording
            assert [x.to_dict() for x in ours_c.supervisions] == [x.to_dict() for x in c.supervisions]
            assert (ours_c.start, ours_c.duration) == (c.start, c.duration)


def test_output_does_not_depend_on_jobs_or_chunks(corpus, tmp_path):
    names = ("librilight_recordings_medium.jsonl.gz", "librilight_supervisions_medium.jsonl.gz",
             "librilight_cuts_medium.jsonl.gz", "rejects_medium.tsv")
    raw, text = {}, {}
    for nj, chunk in ((1, 1), (2, 1), (2, 3), (1, 64)):  # (2, 1): 8 chunks, a pool of 2; (2, 3): in-process
        out = tmp_path / f"o{nj}_{chunk}"
        prepare_librilight(corpus, str(out), subsets=("medium",), num_jobs=nj, chunk_size=chunk)
        raw[nj, chunk] = {n: (out / n).read_bytes() for n in names}
        text[nj, chunk] = {n: gzip.decompress(b) if n.endswith(".gz") else b for n, b in raw[nj, chunk].items()}
    assert raw[1, 1] == raw[2, 1]  # byte for byte, whatever the number of processes
    assert text[1, 1] == text[2, 3] == text[1, 64]  # the content, whatever the chunking (gzip members differ)
    assert len(text[1, 1]["librilight_recordings_medium.jsonl.gz"].splitlines()) == 8


def test_finished_subset_is_skipped_until_the_corpus_changes(tmp_path):
    root = tmp_path / "c"
    make_corpus(str(root), ("small",), speakers=1, books=1, files=3, min_seconds=4, max_seconds=5, seed=1)
    out = str(tmp_path / "o")
    first = prepare_librilight(str(root), out, subsets=("small",))["small"]
    assert not first.up_to_date and first.recordings == 3
    again = prepare_librilight(str(root), out, subsets=("small",))["small"]
    assert again.up_to_date and again.recordings == 3
    # A file removed from the corpus: the listing changed, so the subset is prepared again.
    victim = sorted(root.rglob("*.flac"))[0]
    victim.unlink()
    changed = prepare_librilight(str(root), out, subsets=("small",))["small"]
    assert not changed.up_to_date and changed.recordings == 2
    assert len(_lines(os.path.join(out, "librilight_recordings_small.jsonl.gz"))) == 2
    # A different audio check is a different preparation too.
    assert not prepare_librilight(str(root), out, subsets=("small",), check_audio="full")["small"].up_to_date


def test_leftover_parts_of_an_interrupted_run_are_reused_only_when_current(tmp_path):
    """The state a kill leaves behind (chunk parts with .done files, no final manifests) is resumed from: a part is
    reused when its file list is unchanged and redone when a file under it changed."""
    root = tmp_path / "c"
    make_corpus(str(root), ("small",), speakers=2, books=1, files=3, min_seconds=4, max_seconds=5, seed=2)
    out = tmp_path / "o"
    prepare_librilight(str(root), str(out), subsets=("small",), chunk_size=2)
    reference = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".gz", ".tsv")}
    # Rebuild an interrupted state by hand from the library's own chunk function: parts 0 and 1 done.
    from nest_ssl.prepare.librilight import iter_chunks, output_paths, process_chunk

    paths = output_paths(str(out), "small")
    for key in ("recordings", "supervisions", "cuts", "rejects", "stats", "done"):
        os.remove(paths[key])
    os.makedirs(paths["parts"])
    chunks = list(iter_chunks(str(root), "small", 2))
    for index, rels, h in chunks[:2]:
        process_chunk(str(root), rels, h, os.path.join(paths["parts"], f"chunk{index:08d}"), "tail")
    resumed = prepare_librilight(str(root), str(out), subsets=("small",), chunk_size=2)["small"]
    assert resumed.chunks_reused == 2 and resumed.chunks == 3
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".gz", ".tsv")} == reference
    assert not os.path.exists(paths["parts"])
    # Same again, but a JSON under chunk 0 changed after its part was written: chunk 0 is redone.
    for key in ("recordings", "supervisions", "cuts", "rejects", "stats", "done"):
        os.remove(paths[key])
    os.makedirs(paths["parts"])
    for index, rels, h in chunks[:2]:
        process_chunk(str(root), rels, h, os.path.join(paths["parts"], f"chunk{index:08d}"), "tail")
    js = os.path.join(str(root), chunks[0][1][0][: -len(".flac")] + ".json")
    meta = json.load(open(js))
    meta["speaker"] = "9999"
    with open(js, "w") as f:
        json.dump(meta, f)
    resumed = prepare_librilight(str(root), str(out), subsets=("small",), chunk_size=2)["small"]
    assert resumed.chunks_reused == 1
    speakers = {s["speaker"] for s in _lines(paths["supervisions"])}
    assert "9999" in speakers


def test_missing_subset_is_an_error_not_a_crash(tmp_path):
    (tmp_path / "c" / "small").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "prepare", "librilight", str(tmp_path / "c"),
                        str(tmp_path / "o"), "--subsets", "small,medium"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2  # a user error: one line, exit 2 (the CLI guard)
    assert "medium" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("seconds", [0.0, 0.3, 1.00003125, 2.5, 17.123456, 3600.00004])
def test_sample_rounding_is_lhotses(seconds):
    from lhotse.utils import compute_num_samples as lhotse_cns

    for sr in (8000, 16000, 22050):
        assert compute_num_samples(seconds, sr) == lhotse_cns(seconds, sr)
