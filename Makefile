# Convenience wrapper around CMake for people and CI.
#   make demo   install what is missing, build, fetch the default model, generate text
#   make test   install what is missing, build (normal + ASan/UBSan), run every test
#   make bench  single-node speed against llama.cpp (BENCHMARKS.md section 2)
BUILD      ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
JOBS       ?= 2
CMAKE_ARGS ?=
MODEL      ?= $(shell echo $${SPK_CACHE:-$$HOME/.cache/sparkinfer})/models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: all deps model build build-asan build-tsan test test-fast demo bench clean

all: build

deps:
	@bash scripts/deps.sh

model: deps
	@bash scripts/fetch-model.sh >/dev/null

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
TSAN_TESTS = test_engine|test_api|test_pool|test_cluster$$|test_submit|test_bounds
test: model build build-asan build-tsan
	cd $(BUILD) && SPK_TEST_MODEL=$(MODEL) ctest --output-on-failure -j1
	cd $(TSAN_BUILD) && SPK_TEST_MODEL=$(MODEL) SPK_TEST_SMALL=1 TSAN_OPTIONS=halt_on_error=1 \
		ctest --output-on-failure -j1 -R '$(TSAN_TESTS)'
	cd $(ASAN_BUILD) && SPK_TEST_MODEL=$(MODEL) ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
		ctest --output-on-failure -j1

test-fast: model build
	cd $(BUILD) && SPK_TEST_MODEL=$(MODEL) ctest --output-on-failure -j1

# A 2-rank pipeline-parallel cluster on this machine: the driver starts one spk-worker itself.
demo: model build
	$(BUILD)/examples/spk-generate --model $(MODEL) --pp 2 --threads 1 --chat --max-tokens 120 \
		--prompt "Give me three tips for staying healthy."

bench: model build
	bash bench/vs-llamacpp.sh --model $(MODEL) --threads 2 --build-dir $(BUILD)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD)
