# nest-ssl: make install | make test | make demo | make parity | make bench
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo parity bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	# torch first and pinned: pip here is capped by /etc/xdg/pip and must not pick another build
	$(PY) -m pip install torch==2.9.1
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests --ignore=tests/parity

demo: install
	cd egs/mini && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" ./run.sh

parity: install
	test -x .venv-nemo/bin/python || $(PYTHON) -m venv .venv-nemo
	test -f .venv-nemo/.installed || ( .venv-nemo/bin/pip install torch==2.9.1 && \
	  .venv-nemo/bin/pip install 'nemo_toolkit[asr]==2.7.3' && \
	  .venv-nemo/bin/pip install pytest torch==2.9.1 torchaudio==2.9.1 && \
	  .venv-nemo/bin/pip install --no-deps -e . && touch .venv-nemo/.installed )
	.venv-nemo/bin/python -m pytest -q -rs tests/parity

clean:
	rm -rf $(VENV) build *.egg-info
