# The two set-up commands: `make demo` and `make test`. Every install step lives here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned at install time only (these builds lie on the build
# machine's disk); pyproject.toml keeps loose ranges for users.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench system-deps readme-walk docs clean

# pip speaks only when something fails: no root-user, version or dependency-resolver chatter
# a user cannot act on.
PIP := PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 $(BIN)/pip
PIP_Q := -q -q --no-warn-script-location

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install $(PIP_Q) --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing danlu and its dependencies into $(VENV) (a few minutes the first time)"
	$(PIP) install $(PIP_Q) $(TORCH_PIN)
	$(PIP) install $(PIP_Q) -e .
	@touch $@

# SAHI (the sliced-prediction peer of `danlu bench predict`) without its dependencies: it asks
# for opencv-python, which would sit beside opencv-python-headless in one cv2 folder; what it
# imports is installed already.
SAHI_PIN := sahi==0.12.8

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@echo "installing danlu with the dev and bench extras into $(VENV)"
	$(PIP) install $(PIP_Q) $(TORCH_PIN)
	$(PIP) install $(PIP_Q) -e '.[dev,bench]'
	$(PIP) install $(PIP_Q) --no-deps $(SAHI_PIN)
	@touch $(VENV)/.installed $@

# redis-server and chromium serve the service and browser tests, curl the README walk;
# skipped when present.
system-deps:
	@if ! command -v redis-server >/dev/null || ! command -v chromium >/dev/null \
			|| ! command -v curl >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium curl >/dev/null; \
		else \
			echo "note: redis-server/chromium/curl missing and cannot apt-get here; their tests will skip"; \
		fi; \
	fi

demo: $(VENV)/.installed
	$(BIN)/danlu demo --out runs/demo

test: $(VENV)/.installed-dev system-deps
	$(BIN)/ruff check src tests benchmarks scripts examples
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The documentation site (mkdocs.yml) into site/, offline; a warning is an error.
docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict -f mkdocs.yml -d site

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks scripts examples

# Every bash and python block of README.md, verbatim, in a scratch folder (.ci/run runs it
# after the suite): see scripts/readme_walk.py.
readme-walk: $(VENV)/.installed-dev system-deps
	$(BIN)/python scripts/readme_walk.py

# `make bench NAME=eval`; `danlu bench` lists the names. The train comparison also needs
# `pip install -e '.[bench-train]'` (Ultralytics).
NAME ?= boxes
bench: $(VENV)/.installed-dev
	$(BIN)/danlu bench $(NAME)

clean:
	rm -rf $(VENV) runs site .pytest_cache
