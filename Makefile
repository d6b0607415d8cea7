# The two commands a newcomer runs (see README.md):
#   make demo   build, then the whole journey: bundle, import, airlockd, streamed chat
#   make test   install dependencies, build, run every test
# Everything else here is what those two and CI are made of.

BUILD ?= build
JOBS ?= $(shell nproc)
FUZZ_SECONDS ?= 30

.PHONY: all setup build test demo test-sanitize fuzz-build fuzz-smoke bench package package-test clean

all: build

setup:
	scripts/setup

build: setup
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIRLOCK_WERROR=ON -DAIRLOCK_CUDA=AUTO
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	scripts/demo $(BUILD)

# Second CI job: the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
test-sanitize: setup
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DAIRLOCK_WERROR=ON -DAIRLOCK_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j $(JOBS)

# libFuzzer targets (clang), each run briefly from a generated seed corpus.
fuzz-build: setup
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAIRLOCK_FUZZ=ON -DAIRLOCK_BUILD_TESTS=OFF
	cmake --build build-fuzz -j $(JOBS)

fuzz-smoke: fuzz-build
	scripts/fuzz-smoke build-fuzz $(FUZZ_SECONDS)

bench: build
	bench/verify_throughput.sh $(BUILD)/bundler/airlock

# .deb and .rpm packages (airlock, airlock-bundler) in build-pkg/: a Release
# build without tests or test hooks, installed under /usr.
package:
	scripts/setup --packaging
	cmake -S . -B build-pkg -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
	  -DAIRLOCK_BUILD_TESTS=OFF -DAIRLOCK_TEST_HOOKS=OFF -DAIRLOCK_WERROR=ON
	cmake --build build-pkg -j $(JOBS)
	cd build-pkg && cpack -G "DEB;RPM"

# Install tests of those packages: signed repositories, a bookworm chroot
# (apt install, upgrade, remove, purge), rpm signature checks, lintian.
package-test: package
	scripts/setup --packaging
	tests/packaging/install_test.sh build-pkg

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-pkg
