# nest-ssl: make install | make test | make demo | make parity | make bench
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo parity bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	# torch first and pinned: pip here is capped by /etc/xdg/pip and must not pick another build
	$(PY) -m pip install torch==2.9.1
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# The default suite stays under 10 minutes on 2 cores; the slow cases (marker `slow`) run in `make test-slow`.
test: install
	$(PY) -m pytest -q tests --ignore=tests/parity -m "not slow"

test-slow: install  # pytest's exit 5 (no test carries the marker) is not a failure
	$(PY) -m pytest -q tests --ignore=tests/parity -m slow || [ $$? -eq 5 ]

demo: install
	cd egs/mini && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run.sh

parity: install
	test -x .venv-nemo/bin/python || $(PYTHON) -m venv .venv-nemo
	test -f .venv-nemo/.installed || ( .venv-nemo/bin/pip install torch==2.9.1 && \
	  .venv-nemo/bin/pip install 'nemo_toolkit[asr]==2.7.3' && \
	  .venv-nemo/bin/pip install pytest torch==2.9.1 torchaudio==2.9.1 && \
	  .venv-nemo/bin/pip install --no-deps -e . && touch .venv-nemo/.installed )
	.venv-nemo/bin/python -m pytest -q -rs tests/parity

# The benchmarks that need neither NeMo nor a GPU, at small sizes (a minute or two on two cores); each prints its
# figures against a baseline measured in the same run. Full sizes, bench/model_step.py (ours against NeMo, from
# .venv-nemo) and bench/learning.py (long): README.md.
BENCH_OUT := bench/out/make-bench
bench: install
	$(PY) bench/sampler.py --num-cuts 20000
	$(PY) bench/prepare_librilight.py --sizes 40,400 --jobs 1 --repeat 1 --work-dir $(BENCH_OUT)/prepare
	$(PY) bench/dataloader.py --hours 0.05 --workers 0 --rounds 1 --out $(BENCH_OUT)/dataloader
	$(PY) bench/train_throughput.py --steps 5 --warmup 1 --rounds 1
	$(PY) recipes/nest/make_dummy_data.py --out-dir $(BENCH_OUT)/dummy --num-train 48 --num-val 4
	rm -rf $(BENCH_OUT)/shar
	$(PY) -m nest_ssl.cli shar export $(BENCH_OUT)/dummy/train_manifest.json $(BENCH_OUT)/shar --shard-size 16
	$(PY) bench/shar_resume.py $(BENCH_OUT)/shar --depths 10,50 --repeats 1
	$(PY) bench/feed.py --hours 0.05 --rounds 1 --flop-seconds 4 --out $(BENCH_OUT)/feed
	$(PY) bench/padding.py --num-cuts 5000

clean:
	rm -rf $(VENV) build *.egg-info
