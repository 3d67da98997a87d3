# symgrad: every target sets itself up (creates .venv on first use).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= out
GROUP  ?= d4
DATA   ?= $(OUT)/data/ce-rp.nc
EPOCHS ?= 2
PRESET ?= tiny

.PHONY: install test test-slow test-slurm demo data train-unet train-vit train-gcnn train-relaxed equivariance overlap figures report sweep clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# A real single-node SLURM on this machine (needs root: installs slurm-wlm and munge),
# then a tiny sweep submitted, killed and resubmitted through it (tests/test_slurm.py).
test-slurm: $(STAMP)
	tests/slurm/cluster.sh up
	SLURM_CONF=$${SLURM_TEST_DIR:-/tmp/symgrad-slurm}/slurm.conf SYMGRAD_REQUIRE_SLURM=1 \
	  $(BIN)/python -m pytest -q -m slurm tests/test_slurm.py

# The whole study in miniature: a sweep (experiments/sweeps/demo.toml) into demo_out/, its
# jobs run in this one process; a second run skips every finished job.
demo: $(STAMP)
	$(BIN)/symgrad sweep experiments/sweeps/demo.toml --in-process

data: $(STAMP)
	$(BIN)/symgrad generate --family CE-RP --trajectories 64 --resolution 64 --times 11 --t-final 0.5 --seed 0 --out $(DATA)

train-unet train-vit train-gcnn train-relaxed: train-%: $(STAMP)
	@test -f $(DATA) || $(MAKE) data
	$(BIN)/symgrad train --model $* --preset $(PRESET) --data $(DATA) --out $(OUT)/runs/$* --epochs $(EPOCHS) --seed 0

equivariance: $(STAMP)
	$(BIN)/symgrad equivariance --run $(OUT)/runs/unet --group $(GROUP) --data $(DATA) --out $(OUT)/results/equivariance-$(GROUP).nc

overlap: $(STAMP)
	$(BIN)/symgrad overlap --run $(OUT)/runs/unet --group $(GROUP) --data $(DATA) --metric chi --samples 16 --out $(OUT)/results/overlap-$(GROUP).nc

clean:
	rm -rf $(OUT) demo_out .pytest_cache

figures: $(STAMP)
	$(BIN)/symgrad figures $(OUT)/results/*.nc $(if $(wildcard $(OUT)/runs/*),--runs $(wildcard $(OUT)/runs/*)) --out $(OUT)/figures

report: $(STAMP)
	$(BIN)/symgrad report $(OUT)/results/*.nc $(if $(wildcard $(OUT)/runs/*),--runs $(wildcard $(OUT)/runs/*)) --out $(OUT)/report

# Any sweep file: make sweep SWEEP=experiments/sweeps/paper.toml; the default (quick.toml) generates
# out/data/ce-rp.nc as `make data` does when it is missing.
SWEEP ?= experiments/sweeps/quick.toml
sweep: $(STAMP)
	$(BIN)/symgrad sweep $(SWEEP)
