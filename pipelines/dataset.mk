# pipelines/dataset.mk - raw image folders of the original project's three
# sources (FFHQ, EasyPortrait, LAION-Face) to one resized, merged dataset.
#
#   make -f pipelines/dataset.mk FFHQ=raw/ffhq EASYPORTRAIT=raw/easyportrait \
#        LAION_FACE=raw/laion-face OUT=dataset
#
# Each folder is scanned recursively by df-resize into $(WORK)/<source>/
# with its metadata.jsonl. Every source has a --min-side: FFHQ and
# EasyPortrait images smaller than SIZE (MIN_SIDE) fail rather than being
# upscaled; LAION-Face keeps only images between 512 and 2048 px, as the
# original project did (those below SIZE are upscaled, marked
# "upscaled": true). df-merge then tags every record with its source, drops
# duplicate images across sources, and builds $(OUT): metadata.jsonl +
# hard-linked images under $(OUT)/<source>/. Records that failed anywhere
# (too small, corrupt, ...) end in $(WORK)/failed.jsonl, counted on stderr.
# A source whose variable is empty is left out. Only what changed is redone:
# $(WORK)/<source>.files lists the source's images at any depth (path, size,
# time) and is rewritten only when that list changes, so a source is resized
# again when an image is added, replaced or deleted anywhere under it. Files
# that metadata.jsonl no longer names (resized copies of deleted images) are
# removed from $(WORK)/<source>/ and $(OUT).
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
MIN_SIDE                ?= $(SIZE)
SOURCE_FLAGS_ffhq         ?= --min-side $(MIN_SIDE)
SOURCE_FLAGS_easyportrait ?= --min-side $(MIN_SIDE)
SOURCE_FLAGS_laion-face   ?= --min-side 512 --max-side 2048

SOURCES := $(if $(FFHQ),ffhq) $(if $(EASYPORTRAIT),easyportrait) $(if $(LAION_FACE),laion-face)
SHARDS  := $(foreach s,$(SOURCES),$(WORK)/$(s)/metadata.jsonl)
LISTS   := $(foreach s,$(SOURCES),$(WORK)/$(s).files)

.PHONY: all clean FORCE
.DELETE_ON_ERROR:
.SECONDEXPANSION:

all: $(OUT)/metadata.jsonl

ifeq ($(SOURCES),)
ifneq ($(MAKECMDGOALS),clean)
$(error set at least one of FFHQ, EASYPORTRAIT, LAION_FACE to a folder)
endif
endif

# Remove the files under directory $(1) that $(1)/metadata.jsonl does not
# name. The names are read from the compact records df-resize and df-merge
# write; when a name holds a JSON escape nothing is removed rather than guess.
prune = cd $(1) && find . ! -type d ! -name metadata.jsonl ! -name '.*' -printf '%P\n' | \
	    LC_ALL=C sort > .present && \
	  sed -n 's/.*"file_name":"\([^"\\]*\)".*/\1/p' metadata.jsonl | LC_ALL=C sort -u > .named && \
	  if ! grep -q '"file_name":"[^"]*\\' metadata.jsonl; then \
	    LC_ALL=C comm -23 .present .named | tr '\n' '\0' | xargs -0 -r rm -f -- && \
	    find . -mindepth 1 -type d -empty -delete; fi; \
	  rm -f .present .named

# One source's images at any depth, as df-resize scans them (symlinked
# directories not followed), with size and time; rewritten only when the
# list changes, so that its time says when the source last changed.
$(WORK)/%.files: FORCE
	@mkdir -p $(@D)
	@find $(RAW_$*)/ \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) ! -type d \
	    -printf '%P\t%s\t%T@\n' | LC_ALL=C sort > $@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi

# Named here so that make keeps them (not intermediate files).
$(LISTS): FORCE

# One source: scan, resize, one record per image (failed ones carry "error").
$(WORK)/%/metadata.jsonl: $(WORK)/%.files
	@mkdir -p $(@D)
	$(DF_RESIZE) --scan --root $(RAW_$*) --out $(@D) --size $(SIZE) --format $(FORMAT) \
	    -j $(JOBS) $(SOURCE_FLAGS_$*) $(RESIZE_FLAGS) > $@.tmp
	mv $@.tmp $@
	@$(call prune,$(@D))

# All sources: tagged, deduplicated, linked into $(OUT); failures aside;
# $(OUT) holds exactly what its metadata.jsonl names.
$(OUT)/metadata.jsonl: $(SHARDS)
	$(DF_MERGE) $(MERGE_FLAGS) --out $(OUT) \
	    $(foreach s,$(SOURCES),--source $(s) $(WORK)/$(s)/metadata.jsonl) > $(WORK)/failed.jsonl
	@$(call prune,$(OUT))

FORCE:

clean:
	rm -rf $(WORK) $(OUT)
