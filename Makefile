# Two commands: `make demo` and `make test`. Both create .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# torch and torchvision are pinned to the wheels these machines carry on disk;
# elsewhere pip fetches the same releases from the registry.
TORCH := torch==2.14.1 torchvision==0.29.1
# Installed without their declared dependencies (kadr[megadetector,speciesnet] brings what they
# import; see pyproject.toml): the parity tests run them as a user of the field does.
FIELD := megadetector==10.0.28 speciesnet==5.0.6 yolov5==7.0.11

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps $(FIELD)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/kadr demo --shared $(SHARED) -o demo-out

test: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -rs

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench

bench: $(BIN)/.installed
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/events.py
	$(BIN)/python bench/caption.py
	$(BIN)/python bench/restyle.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/stages.py

clean:
	rm -rf $(VENV) demo-out
