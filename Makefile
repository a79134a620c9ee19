# Convenience wrapper around CMake for people and CI.
#   make demo   install what is missing, build, fetch the default model, generate text
#   make test   install what is missing, build (normal + ASan/UBSan), run every test
#   make test-arm64  cross-build for aarch64, run the kernel and model tests under qemu-user
#   make bench  single-node speed against llama.cpp (BENCHMARKS.md section 2)
BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
JOBS       ?= 2
CMAKE_ARGS ?=
MODEL      ?= $(shell echo $${SPK_CACHE:-$$HOME/.cache/sparkinfer})/models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: all deps model refsrc build build-asan build-tsan test test-fast test-arm64 test-x86-emu demo bench clean

all: build

deps:
	@bash scripts/deps.sh

model: deps
	@bash scripts/fetch-model.sh >/dev/null

# llama.cpp's sources (no build, ~30 s once): its vocab-only GGUF files are the tokenizer tests' data
refsrc: deps
	@bash tests/ref/fetch-llamacpp-src.sh >/dev/null

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS) >/dev/null
	cmake --build $(BUILD) -j$(JOBS)

build-asan: deps
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPK_SANITIZE=ON -DSPK_BUILD_EXAMPLES=ON $(CMAKE_ARGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j$(JOBS)

build-tsan: deps
	cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPK_TSAN=ON $(CMAKE_ARGS) >/dev/null
	cmake --build $(TSAN_BUILD) -j$(JOBS)

# Every test, in the normal build and again under ASan+UBSan; the threaded ones (engine, API,
# pool, cluster) also under TSan, with the engine test's smaller request set.
TSAN_TESTS = test_engine|test_api|test_outputs|test_pool|test_cluster$$|test_cluster_auth|test_transport_tcp_auth|test_submit|test_bounds|test_backend$$
test: model refsrc build build-asan build-tsan
	cd $(BUILD) && SPK_TEST_MODEL=$(MODEL) ctest --output-on-failure -j1
	cd $(TSAN_BUILD) && SPK_TEST_MODEL=$(MODEL) SPK_TEST_SMALL=1 TSAN_OPTIONS=halt_on_error=1 \
		ctest --output-on-failure -j1 -R '$(TSAN_TESTS)'
	cd $(ASAN_BUILD) && SPK_TEST_MODEL=$(MODEL) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j1
	$(MAKE) test-arm64
	$(MAKE) test-x86-emu

# aarch64 (the DGX Spark's CPU) on an x86-64 host: cross-built with cmake/aarch64-linux-gnu.cmake
# and run under qemu-user -cpu max, so the NEON, dotprod and i8mm kernels run against the scalar
# reference (test_matmul fails if the i8mm level is missing). About 5 minutes on 2 cores from
# a clean tree, 2 of them golden (the whole model under emulation). Left out, and why:
#   test_cluster*, test_transport_*, test_dist, sh_*: multi-process ranks over TCP, netns, the
#     examples; they test sockets and processes, not aarch64 code, and take minutes emulated;
#   test_engine, test_api, test_shard: the forward pass golden already runs, many more times
#     over: emulated, test_api passed in 1.5 min and test_shard in 3, test_engine had not
#     finished after 8 (measured once by hand; together over the ~10 minute budget);
#   nothing with verbs/NCCL/CUDA: not built for arm64.
ARM64_BUILD ?= build-arm64
ARM64_TESTS = test_matmul test_quant_types test_ops test_gguf test_gguf_model test_tokenizer test_tokenizer_model \
	test_sampler test_plan test_proto test_synth test_pool test_golden test_backend
# Again under ASan+UBSan (leak checks off: LSan cannot run under qemu-user): the tests of the
# code that is aarch64-only (NEON kernels, the pool's spin hint); the rest is the same C the
# host's ASan run covers, and would double the time.
# (Measured in a quiet CI run on the 2-core machine, 2026-11-30: test_matmul 92 s Release and
# 202 s ASan, test_quant_types 10 s and 30 s; with the Q8_0 and MXFP4 repack cases added the same
# day, test_matmul 87 s and 240 s, measured by hand.)
ARM64_ASAN_TESTS = test_matmul test_quant_types test_ops test_pool test_backend
test-arm64: model
	SPK_TEST_MODEL=$(MODEL) bash scripts/test-arm64.sh $(ARM64_BUILD) $(JOBS) "$(ARM64_TESTS)" \
		"$(ARM64_ASAN_TESTS)"

# The x86 kernel tests again under qemu-x86_64 -cpu max (AVX2+FMA+F16C, no AVX-512), so the
# AVX2 kernels are checked on hosts without AVX2 (test_matmul must find the avx2 level). About
# 55 s (test_matmul 50 s, test_ops 3 s, test_quant_types 2 s, measured on the 2-core dev machine).
X86_EMU_TESTS = test_matmul test_ops test_quant_types
test-x86-emu: build
	bash scripts/test-x86-emu.sh $(BUILD) "$(X86_EMU_TESTS)"

test-fast: model build
	cd $(BUILD) && SPK_TEST_MODEL=$(MODEL) ctest --output-on-failure -j1

# A 2-rank pipeline-parallel cluster on this machine: the driver starts one spk-worker itself.
demo: model build
	$(BUILD)/examples/spk-generate --model $(MODEL) --pp 2 --threads 1 --chat --max-tokens 120 \
		--prompt "Give me three tips for staying healthy."

bench: model build
	bash bench/vs-llamacpp.sh --model $(MODEL) --threads 2 --build-dir $(BUILD)

# libFuzzer targets (tests/fuzz) for FUZZ_TIME seconds each from the committed seed corpus, in
# a clang build of their own; part of `make test`.
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME  ?= 20
fuzz: deps
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DSPK_FUZZ=ON -DSPK_BUILD_EXAMPLES=OFF $(CMAKE_ARGS) >/dev/null
	cmake --build $(FUZZ_BUILD) -j$(JOBS) --target $(notdir $(basename $(wildcard tests/fuzz/fuzz_*.c)))
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_TIME)
test: fuzz
clean: clean-fuzz-abi
clean-fuzz-abi:
	rm -rf $(FUZZ_BUILD) $(ABI_BUILD)
.PHONY: fuzz abi-baseline clean-fuzz-abi

# The ABI baseline (docs/ABI.md): a debug-info build of the library only, then abidw.
ABI_BUILD ?= build-abi
abi-baseline: deps
	cmake -S . -B $(ABI_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSPK_BUILD_TESTS=OFF -DSPK_BUILD_EXAMPLES=OFF $(CMAKE_ARGS) >/dev/null
	cmake --build $(ABI_BUILD) -j$(JOBS) --target sparkinfer
	bash tests/sh/runpath.sh $(ABI_BUILD) >/dev/null
	bash abi/abi.sh dump $(ABI_BUILD)/libsparkinfer.so abi/libsparkinfer.abi

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(ARM64_BUILD)
