# lakeloom — two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: venv sysdeps demo test check format bench pipeline clean-demo families

venv: $(STAMP)

# Recreated only when missing or when pyproject.toml / requirements-nodeps.txt change.
$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -m pip install -q -e ".[dev]" 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt 2>&1 | { grep -v "is ignored" || true; }
	$(BIN)/python -c "import lake, lancedb, imagehash"
	touch $(STAMP)

DEMO_RUN ?= demo-clip-tiny
DEMO_MINILM_RUN ?= demo-clip-minilm
DEMO_MINILM_LAKE ?= data/lake-minilm
DEMO_VLM_RUN ?= demo-llava-tiny
DEMO_SMOL_ALIGN ?= demo-llava-smollm2-align
DEMO_SMOL_LORA ?= demo-llava-smollm2-lora
DEMO_APOTHEON_RUN ?= demo-apotheon-tiny

# The main job end to end: demo data (shapes images, synthetic videos, spoken shape sentences)
# -> lake -> tiny CLIP -> embeddings -> checks -> figures -> tiny LLaVA fine-tuned on the demo's
# conversations -> speech transcripts of all audio -> the tiny LLaVA captions the video frames
# -> tiny Apotheon (vision + audio + language) trained through its curriculum on all of it.
# Each step is idempotent: a finished training run is reused, a killed one resumes.
demo: $(STAMP)
	@$(MAKE) -s sysdeps || echo "espeak-ng or pocketsphinx-testdata could not be installed: the demo goes on without that speech"
	$(BIN)/lakeloom demo
	test -f runs/$(DEMO_RUN)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_RUN)/summary.json \
	  || $(BIN)/lakeloom train +experiment=clip_tiny run_id=$(DEMO_RUN) \
	       $$(test -f runs/$(DEMO_RUN)/checkpoints/last.ckpt && echo resume=true)
	$(BIN)/lakeloom enrich enrich=clip enrich.model.run=$(DEMO_RUN) enrich.reembed=true
	$(BIN)/lakeloom check
	test -f runs/$(DEMO_MINILM_RUN)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_MINILM_RUN)/summary.json \
	  || $(BIN)/lakeloom train +experiment=clip_minilm_locked run_id=$(DEMO_MINILM_RUN) \
	       $$(test -f runs/$(DEMO_MINILM_RUN)/checkpoints/last.ckpt && echo resume=true)
# the MiniLM-text CLIP (384-d) embeds and checks a copy of the lake (its vectors have another
# width than the tiny CLIP's, which stay in data/lake); bench/checks.py compares the two
	$(BIN)/python -m lake.fork data/lake $(DEMO_MINILM_LAKE) --drop-embeddings
	$(BIN)/lakeloom enrich enrich=clip enrich.model.run=$(DEMO_MINILM_RUN) lake.uri=$(DEMO_MINILM_LAKE)
	$(BIN)/lakeloom check lake.uri=$(DEMO_MINILM_LAKE) lake.reports=data/reports-minilm
	$(BIN)/python bench/checks.py --compare-lake $(DEMO_MINILM_LAKE)
	test -f runs/$(DEMO_VLM_RUN)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_VLM_RUN)/summary.json \
	  || $(BIN)/lakeloom train +experiment=llava_tiny run_id=$(DEMO_VLM_RUN) \
	       $$(test -f runs/$(DEMO_VLM_RUN)/checkpoints/last.ckpt && echo resume=true)
	$(BIN)/python -c "import json; s = json.load(open('runs/$(DEMO_VLM_RUN)/summary.json')); \
	  print('llava_tiny: train loss %.3f -> %.3f; val' % tuple(s['train_loss']), s['last_val'])"
	test -f runs/$(DEMO_SMOL_ALIGN)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_SMOL_ALIGN)/summary.json \
	  || $(BIN)/lakeloom train +experiment=llava_smollm2_align run_id=$(DEMO_SMOL_ALIGN) \
	       model.vision_from=runs/$(DEMO_RUN) \
	       $$(test -f runs/$(DEMO_SMOL_ALIGN)/checkpoints/last.ckpt && echo resume=true)
	test -f runs/$(DEMO_SMOL_LORA)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_SMOL_LORA)/summary.json \
	  || $(BIN)/lakeloom train +experiment=llava_smollm2_lora run_id=$(DEMO_SMOL_LORA) \
	       model.init_from=runs/$(DEMO_SMOL_ALIGN) \
	       $$(test -f runs/$(DEMO_SMOL_LORA)/checkpoints/last.ckpt && echo resume=true)
	$(BIN)/python -m core.compare_runs runs/$(DEMO_VLM_RUN) runs/$(DEMO_SMOL_LORA)
	$(BIN)/lakeloom enrich enrich=transcribe
	$(BIN)/lakeloom enrich enrich=caption enrich.model.run=$(DEMO_VLM_RUN) "enrich.where=\"dataset = 'clips'\""
	test -f runs/$(DEMO_APOTHEON_RUN)/summary.json && grep -q '"status": "finished"' runs/$(DEMO_APOTHEON_RUN)/summary.json \
	  || $(BIN)/lakeloom train +experiment=apotheon_tiny run_id=$(DEMO_APOTHEON_RUN) \
	       $$(test -f runs/$(DEMO_APOTHEON_RUN)/checkpoints/last.ckpt && echo resume=true)
	$(BIN)/python -m core.run_report runs/$(DEMO_APOTHEON_RUN)
	$(BIN)/lakeloom stats

# Every VLM family a few steps on the demo lake (after `make demo`): train, merge, reload.
families: $(STAMP)
	$(BIN)/python -m core.family_check data/lake

# System packages the tests and the demo use: espeak-ng synthesises the speech they
# transcribe; pocketsphinx-testdata holds real read speech with reference transcripts.
SPEECH_DATA := /usr/share/pocketsphinx/test/data/librivox/transcription
sysdeps:
	@{ command -v espeak-ng >/dev/null && test -f $(SPEECH_DATA); } || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	  else echo "make test needs espeak-ng and pocketsphinx-testdata (apt-get install ...)" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq espeak-ng pocketsphinx-testdata >/dev/null; }

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q --durations=20

check: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

# The DVC pipeline (dvc.yaml); its stages call `lakeloom`, so the venv goes on PATH.
pipeline: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 $(BIN)/dvc repro

clean-demo:
	rm -rf data/lake data/demo $(DEMO_MINILM_LAKE) data/reports-minilm
