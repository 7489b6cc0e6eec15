# diffyface: one build for everything.
#   make            libdf.a, bin/df-*, tests/check-fixtures
#   make test       every test (unit, tool, fixture); SAN=1 adds ASan/UBSan
#   make bench      benchmarks: print figures, assert nothing
#   make deps       install the Debian packages the project needs
#   make serve MODEL=...  df-serve on that model (see man/df-serve.1)
#   make install PREFIX=/usr/local
#   CUDA=1          also compile kernels/*.cu with nvcc into libdf
# Sources are found by wildcard, so a new lib/<layer>/*.c, tools/df-*.c,
# tests/unit/test_*.c or tests/tools/test-*.sh needs no edit here.

# `all` is the goal of a plain `make` even though rules (clip_bpe.o's
# prerequisite) come before it.
.DEFAULT_GOAL := all

CC      ?= gcc
PREFIX  ?= /usr/local
FIXTURES ?= ../shared/fixtures
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
# lib/ is grouped by layer (base, io, ops, models, train: see README,
# "Layout"); headers are included by name, so every layer is on the path.
LIB_DIRS := $(sort $(dir $(wildcard lib/*/*.c lib/*/*.h)))
LIB_HDR  := $(wildcard lib/*/*.h)
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-unused-parameter -pthread \
           $(addprefix -I,$(LIB_DIRS))
LDLIBS  += -ljansson -ljpeg -lpng -lcurl -lcrypto -lopenblas -lutf8proc -lz -lm -lpthread

ifeq ($(SAN),1)
  BUILD   := build-san
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else
  BUILD   := build
endif
# The CUDA build (CUDA=1) compiles everything again with -DDF_CUDA=1 into
# its own tree (build-cuda, build-san-cuda), so it never disturbs the CPU one.
ifeq ($(CUDA),1)
  BUILD   := $(BUILD)-cuda
endif
# bin/ stays for the normal build; the sanitized and CUDA builds keep their own copy.
BIN := $(if $(filter 1,$(SAN) $(CUDA)),$(BUILD)/bin,bin)

# Per-file flags: CFLAGS_<basename>. The resampler's inner loops run over
# independent samples, so -O3's loop vectorizer speeds them up without
# reordering any sum (results are bit-identical to -O2).
CFLAGS_image_resize := -O3

# lib/base/rng and lib/models/scheduler reproduce torch's and numpy's float
# rounding bit for bit: the compiler must not fuse their multiply-adds (GCC's
# -std=c11 default; clang would contract).
CFLAGS_rng := -ffp-contract=off
CFLAGS_scheduler := -ffp-contract=off
CFLAGS_scheduler_ddim := -ffp-contract=off
CFLAGS_scheduler_euler := -ffp-contract=off
CFLAGS_scheduler_dpm := -ffp-contract=off

LIB_SRC  := $(wildcard lib/*/*.c)
LIB_OBJ  := $(patsubst lib/%.c,$(BUILD)/lib/%.o,$(LIB_SRC))
# CUDA=1: kernels/*.cu (the CUDA op layer, lib/ops/ops_cuda.h) with nvcc,
# warnings as errors. CUDA_ARCH: native code for A100 (sm_80) and H100
# (sm_90) plus sm_90 PTX, which newer GPUs compile at load time.
CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
NVCCFLAGS ?= -O2 -g
NVCCFLAGS += -std=c++17 $(CUDA_ARCH) -DDF_CUDA=1 -Werror all-warnings \
             -Xcompiler -Wall,-Wextra,-Werror
ifeq ($(CUDA),1)
  CU_SRC    := $(wildcard kernels/*.cu)
  LIB_OBJ   += $(patsubst kernels/%.cu,$(BUILD)/kernels/%.o,$(CU_SRC))
  CFLAGS    += -DDF_CUDA=1
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 \
               -lcudnn -lcublas -lcudart -lstdc++
endif
LIBDF    := $(BUILD)/libdf.a
# The built-in CLIP BPE is embedded with .incbin (lib/models/clip_bpe.c).
$(BUILD)/lib/models/clip_bpe.o: lib/models/clip_merges.txt.gz

TOOLS    := $(patsubst tools/%.c,$(BIN)/%,$(wildcard tools/df-*.c))
HELPERS  := $(patsubst tools/%.c,$(BUILD)/tools/%,$(filter-out tools/df-%,$(wildcard tools/*.c)))
# tests/unit/test_cuda_*.c need the CUDA build (they skip, exit 77, without a GPU).
UNIT_SRC := $(filter-out $(if $(filter 1,$(CUDA)),,tests/unit/test_cuda_%),$(wildcard tests/unit/test_*.c))
UNIT     := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
CHECKFX_SRC := $(wildcard tests/check_fixtures/*.c)
CHECKFX  := $(if $(filter 1,$(SAN) $(CUDA)),$(BUILD)/tests/check-fixtures,tests/check-fixtures)

.PHONY: all test bench deps install clean demo fuzz serve
all: $(LIBDF) $(TOOLS) $(HELPERS) $(UNIT) $(CHECKFX)

$(BUILD)/lib/%.o: lib/%.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CFLAGS_$(notdir $(basename $<))) -c -o $@ $<

$(BUILD)/kernels/%.o: kernels/%.cu $(LIB_HDR) $(wildcard kernels/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) $(addprefix -I,$(LIB_DIRS)) -Ikernels -c -o $@ $<

$(LIBDF): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/%: tools/%.c $(LIBDF)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBDF) $(LDLIBS)

# df-serve is tools/df-serve.c plus its parts in tools/df-serve/ (one job a
# file) and the page embedded with .incbin; only it links libmicrohttpd.
SERVE_SRC := tools/df-serve.c $(wildcard tools/df-serve/*.c)
$(BIN)/df-serve: $(SERVE_SRC) $(wildcard tools/df-serve/*.h) tools/df-serve/page.html $(LIBDF)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itools/df-serve $(LDFLAGS) -o $@ $(SERVE_SRC) $(LIBDF) $(LDLIBS) -lmicrohttpd

$(BUILD)/tools/%: tools/%.c $(LIBDF)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LIBDF) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/unit.h $(LIBDF)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) -o $@ $< $(LIBDF) $(LDLIBS)

$(CHECKFX): $(CHECKFX_SRC) $(wildcard tests/check_fixtures/*.h) $(LIBDF)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/check_fixtures $(LDFLAGS) -o $@ $(CHECKFX_SRC) $(LIBDF) $(LDLIBS)

# The test runner gets the build's paths so that SAN=1 tests the sanitized binaries.
test: all
	DF_BIN=$(CURDIR)/$(BIN) DF_BUILD=$(CURDIR)/$(BUILD) DF_CHECKFX=$(CURDIR)/$(CHECKFX) \
	DF_FIXTURES=$(abspath $(FIXTURES)) bash tests/run-tests.sh

bench: all
	DF_BIN=$(CURDIR)/$(BIN) DF_BUILD=$(CURDIR)/$(BUILD) bash tests/run-bench.sh

DEB_PACKAGES := build-essential libjansson-dev libjpeg62-turbo-dev libpng-dev \
  libcurl4-openssl-dev libssl-dev libopenblas-dev zlib1g-dev parallel curl \
  python3 python3-pil python3-numpy libutf8proc-dev clang libclang-rt-dev libmicrohttpd-dev \
  chromium chromium-driver python3-selenium
deps:
	@if dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then echo "deps: all installed"; else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y --no-install-recommends $(DEB_PACKAGES); fi

include tests/fuzz/fuzz.mk

# A tiny random model and a synthetic dataset through the whole training
# pipeline: pipelines/demo.mk (DEMO_DIR=build/demo, DEMO_STEPS=150).
demo: $(TOOLS) $(HELPERS)
	$(MAKE) --no-print-directory -f pipelines/demo.mk BIN=$(CURDIR)/$(BIN)/ BUILD=$(CURDIR)/$(BUILD)

# make serve MODEL=DIR-or-FILE [LORA=FILE[:SCALE]] [LISTEN=127.0.0.1:7860]
# [OUT=df-serve-images] [SERVE_FLAGS=...]: df-serve in the foreground (Ctrl-C stops it).
serve: $(BIN)/df-serve
	@test -n "$(MODEL)" || { echo "make serve: MODEL=... (a diffusers folder or a .safetensors file) is required" >&2; exit 2; }
	$(BIN)/df-serve --model "$(MODEL)" $(if $(LORA),--lora "$(LORA)") --listen $(or $(LISTEN),127.0.0.1:7860) \
	    --out "$(or $(OUT),df-serve-images)" $(SERVE_FLAGS)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(wildcard man/*.1) $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 $(wildcard man/*.7) $(DESTDIR)$(PREFIX)/share/man/man7

clean:
	rm -rf build build-san build-cuda build-san-cuda bin tests/check-fixtures
