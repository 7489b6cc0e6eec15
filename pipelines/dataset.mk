# pipelines/dataset.mk - raw image folders of the original project's three
# sources (FFHQ, EasyPortrait, LAION-Face) to one resized, merged dataset.
#
#   make -f pipelines/dataset.mk FFHQ=raw/ffhq EASYPORTRAIT=raw/easyportrait \
#        LAION_FACE=raw/laion-face OUT=dataset
#
# Each folder is scanned recursively by df-resize (LAION-Face keeps only
# images between 512 and 2048 px, as the original project did) into
# $(WORK)/<source>/ with its metadata.jsonl; df-merge then tags every record
# with its source, drops duplicate images across sources, and builds $(OUT):
# metadata.jsonl + hard-linked images under $(OUT)/<source>/. Records that failed anywhere
# (too small, corrupt, ...) end in $(WORK)/failed.jsonl, counted on stderr.
# A source whose variable is empty is left out. Only what changed is redone:
# a source is resized again when its folder is newer than its metadata.
# Tested end to end by tests/tools/test-pipeline-dataset.sh.

# Inputs (raw folders) and outputs.
FFHQ         ?=
EASYPORTRAIT ?=
LAION_FACE   ?=
WORK         ?= work
OUT          ?= dataset

# Settings.
SIZE         ?= 768
FORMAT       ?= jpg
JOBS         ?= $(shell nproc 2>/dev/null || echo 1)
RESIZE_FLAGS ?= --quiet
MERGE_FLAGS  ?= --quiet --dedupe content --source-dirs
# The programs: the build's bin/ next to this file when present, else PATH.
HERE         := $(dir $(lastword $(MAKEFILE_LIST)))
BIN          ?= $(if $(wildcard $(HERE)../bin/df-merge),$(HERE)../bin/,)
DF_RESIZE    ?= $(BIN)df-resize
DF_MERGE     ?= $(BIN)df-merge

# Per source: raw folder and extra df-resize options.
RAW_ffhq                := $(FFHQ)
RAW_easyportrait        := $(EASYPORTRAIT)
RAW_laion-face          := $(LAION_FACE)
SOURCE_FLAGS_laion-face := --min-side 512 --max-side 2048

SOURCES := $(if $(FFHQ),ffhq) $(if $(EASYPORTRAIT),easyportrait) $(if $(LAION_FACE),laion-face)
SHARDS  := $(foreach s,$(SOURCES),$(WORK)/$(s)/metadata.jsonl)

.PHONY: all clean
.DELETE_ON_ERROR:
.SECONDEXPANSION:

all: $(OUT)/metadata.jsonl

ifeq ($(SOURCES),)
ifneq ($(MAKECMDGOALS),clean)
$(error set at least one of FFHQ, EASYPORTRAIT, LAION_FACE to a folder)
endif
endif

# One source: scan, resize, one record per image (failed ones carry "error").
$(WORK)/%/metadata.jsonl: $$(RAW_$$*)
	@mkdir -p $(@D)
	$(DF_RESIZE) --scan --root $(RAW_$*) --out $(@D) --size $(SIZE) --format $(FORMAT) \
	    -j $(JOBS) $(SOURCE_FLAGS_$*) $(RESIZE_FLAGS) > $@.tmp
	mv $@.tmp $@

# All sources: tagged, deduplicated, linked into $(OUT); failures aside.
$(OUT)/metadata.jsonl: $(SHARDS)
	$(DF_MERGE) $(MERGE_FLAGS) --out $(OUT) \
	    $(foreach s,$(SOURCES),--source $(s) $(WORK)/$(s)/metadata.jsonl) > $(WORK)/failed.jsonl

clean:
	rm -rf $(WORK) $(OUT)
