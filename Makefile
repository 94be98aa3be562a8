# The README's two commands: `make demo` (set up and run the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup browser demo sim lora test bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# The main job: an entry supernode, a second supernode and 4 edge nodes on loopback (SQLite
# ledgers), FedPer on scikit-learn's digits (offline) through the console's scripting mode.
demo: setup
	$(PY) scripts/local_network.py

# The standalone simulation (no network): FedPer on digits, 10 clients with 2 classes each.
sim: setup
	$(PY) -m fl --dataset digits --clients 10 --rounds 20 --strategy fedper \
		--partition pathological --batch-size 16 --lr 0.05 --out runs/demo

# Federated LoRA fine-tuning of a language model: a tiny Llama pretrained offline on the standard
# library's docstrings (3 minutes, once, into models/), then 4 clients with two topic families each.
lora: setup
	test -f models/tiny-stdlib-lm/config.json || $(PY) -m fl.lm.pretrain --out models/tiny-stdlib-lm --minutes 3
	$(PY) -m fl --dataset stdlib --model-path models/tiny-stdlib-lm --clients 4 --rounds 5 --strategy fedavg \
		--lora-variant ffa --partition pathological --lr 0.01 --batch-size 16 --local-epochs 1 --out runs/lora

# Debian's Chromium for the explorer's browser test (installed when missing, where root can apt-get)
browser:
	@scripts/install_browser.sh

# pytest exits 5 when it collected no test: that is a failure here, said plainly.
test: setup browser
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; fi; exit $$rc

bench: setup
	$(PY) bench/accuracy.py --dataset digits
	$(PY) bench/ledger.py
	$(PY) bench/transfer.py
	$(PY) bench/round_overhead.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) runs .pytest_cache
