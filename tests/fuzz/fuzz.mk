# tests/fuzz/fuzz.mk - libFuzzer harnesses for the parsers of untrusted bytes
# (included by the Makefile; each harness's top comment says what it covers).
#   make fuzz                  every harness for FUZZ_RUNS executions
#   make fuzz FUZZ_RUNS=20000  a short run
#   make fuzz-build            only build them, into build-fuzz/
# The library is compiled again with clang, -fsanitize=fuzzer-no-link,
# address,undefined (UBSan does not recover: any report is a crash), and
# each tests/fuzz/fuzz_<name>.c is linked with -fsanitize=fuzzer. A run
# starts from the seeds in tests/fuzz/corpus/<name>/ (read only: new inputs
# go to build-fuzz/corpus/<name>/) and fails on any crash, leak, timeout or
# sanitizer report; libFuzzer leaves the input as build-fuzz/crash-*.

FUZZ_CC     ?= clang
FUZZ_RUNS   ?= 1000000
FUZZ_BUILD  := build-fuzz
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -pthread -Wall -Wno-unused-parameter \
               -Wno-unused-function $(addprefix -I,$(LIB_DIRS))
# Library objects are instrumented, except the numeric kernels (lib/ops,
# lib/train), which parse nothing and which clang takes minutes and gigabytes
# to compile with ASan and UBSan (make test builds all of this).
FUZZ_OBJ_SAN := $(FUZZ_SAN) -fsanitize=fuzzer-no-link
$(FUZZ_BUILD)/lib/ops/%.o $(FUZZ_BUILD)/lib/train/%.o: FUZZ_OBJ_SAN := -O2
FUZZ_LIBOBJ := $(patsubst lib/%.c,$(FUZZ_BUILD)/lib/%.o,$(LIB_SRC))
FUZZ_SRC    := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS   := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(FUZZ_SRC))
# Harnesses that #include a source file to reach its static parsers link
# without that file's object: FUZZ_OMIT_<harness> names it.
FUZZ_OMIT_fuzz_http := $(FUZZ_BUILD)/lib/io/http.o
# fuzz_serve runs df-serve's request handlers: it links their sources (not
# the HTTP, gallery and pipeline parts, which it stubs).
FUZZ_SERVE_SRC := $(addprefix tools/df-serve/serve_,reply.c request.c queue.c page.c openai.c a1111.c)
$(FUZZ_BUILD)/fuzz_serve: tests/fuzz/fuzz_serve.c $(FUZZ_SERVE_SRC) $(wildcard tools/df-serve/*.h) \
                          tests/fuzz/fuzz_util.h $(FUZZ_LIBOBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -Itests/fuzz -Itools/df-serve -fsanitize=fuzzer -o $@ $< \
	  $(FUZZ_SERVE_SRC) $(FUZZ_LIBOBJ) $(LDLIBS)
# A per-input time limit (seconds) so that a hang is a finding too.
FUZZ_FLAGS  ?= -timeout=20 -rss_limit_mb=2048 -print_final_stats=1
FUZZ_FIXTURES ?= $(abspath $(FIXTURES))

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

$(FUZZ_BUILD)/lib/%.o: lib/%.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_OBJ_SAN) -c -o $@ $<

$(FUZZ_BUILD)/%: tests/fuzz/%.c tests/fuzz/fuzz_util.h $(FUZZ_LIBOBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_SAN) -Itests/fuzz -fsanitize=fuzzer -o $@ $< \
	  $(filter-out $(FUZZ_OMIT_$*),$(FUZZ_LIBOBJ)) $(LDLIBS)

# Every harness runs even when one fails; the target fails if any did.
fuzz: $(FUZZ_BINS)
	@fail=; for b in $(FUZZ_BINS); do n=$$(basename $$b); n=$${n#fuzz_}; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$n; echo "== fuzz_$$n: $(FUZZ_RUNS) runs"; \
	  if ! (cd $(FUZZ_BUILD) && DF_FIXTURES=$(FUZZ_FIXTURES) ./fuzz_$$n $(FUZZ_FLAGS) \
	        -runs=$(FUZZ_RUNS) corpus/$$n $(CURDIR)/tests/fuzz/corpus/$$n); then \
	    fail="$$fail fuzz_$$n"; fi; done; \
	if [ -n "$$fail" ]; then echo "fuzz: FAILED:$$fail"; exit 1; fi; echo "fuzz: all passed"
