"""The content-addressed image store: where CRIU image sets live between dump and restore.

CRIU writes every page of the process at every dump (no soft-dirty tracking on this kernel), so
repeated checkpoints are made cheap here. The pieces, each in its own module:

  chunking.py     how an image file is cut: page data per page, along the pagemap's runs;
                  every other image is one chunk. A chunk is named by its sha256.
  packs.py        pack files: new chunks compressed in groups (one zstd frame with checksum per
                  GROUP chunks) on worker threads, written and fsynced; frames read back.
  catalog/chunks.py  the index: the chunks, packs and image_files tables (every catalog
                  read and write is in catalog/). A chunk's place is a ChunkLocation.
  ingest.py       staging directory -> new pack + index rows (committed by the caller).
  materialize.py  index rows + packs -> the image set again (or one file, for the view).
  gc.py           freeing unreferenced chunks (rewriting their packs) and verifying chunks.
  chunkstore.py   ChunkStore: the store of one state directory, and its lock.
  imagesets.py    a checkpoint's image set as the operations see it (the only entry point
                  operations use).

Packs are written and fsynced before the catalog transaction that references them commits;
docs/image-store.md explains the choice of one page per chunk.
"""

from catalog.chunks import StoreError  # noqa: F401 - the store's error, raised by its index too

# checkpoints.image_format of an image set in the store (None: a files-only checkpoint).
STORE_FORMAT = "cas"
