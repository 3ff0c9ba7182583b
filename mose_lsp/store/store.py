"""The :class:`Store`: one workspace index, put together from its parts (see the package
docstring)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..ann import HnswIndex, HnswParams
from ..errors import StoreError
from .database import DB_NAME, DEEP, FRESH, log
from .fulltext import FullTextMixin
from .reads import ReadsMixin
from .schema import SchemaMixin
from .vector_cache import ANN_FILES
from .writes import WritesMixin

if TYPE_CHECKING:
    from typing_extensions import Self


class Store(WritesMixin, ReadsMixin, FullTextMixin, SchemaMixin):
    """A workspace index: files, chunks and per-exit vectors in SQLite, plus two vector
    indexes that partition the chunks for candidate search (deep vectors where the background
    pass made them, shallow vectors for the rest; see the module docstring). Build with
    :meth:`open`."""

    # -- opening

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        *,
        dims: Mapping[int, int],
        index_exit: int,
        model_id: str,
        rerank_exit: int | None = None,
        ann: str = HnswIndex.KIND,
        hnsw_params: HnswParams | None = None,
        deep_index: bool = True,
        fresh_ann: str | None = None,
    ) -> Store:
        """Open (or create) the store in ``index_dir``.

        ``dims`` maps each exit layer the model provides to its embedding dimension;
        ``index_exit`` is the layer every chunk is embedded with on write (the shallow one),
        ``rerank_exit`` the deep one. ``model_id`` identifies the model and the exits in use
        (name plus manifest checksums): when it differs from the one the store was built with,
        all stored vectors are dropped and :attr:`needs_reembed` is set. ``ann`` picks the
        vector index: ``"hnsw"`` (default) or ``"brute"`` (exact; fine for small workspaces);
        ``hnsw_params`` its parameters; ``fresh_ann`` another kind for the fresh index alone
        (``"brute"``: exact, memory that follows the live count, no graph inserts; queries
        cost O(n), a few ms at 100k). ``deep_index=False`` keeps one index over the index-exit
        vectors even when there is a rerank exit (see the module docstring).

        Raises :class:`StoreError` when the folder or database cannot be used, with what to do.
        """
        if index_exit not in dims:
            raise ValueError(f"index_exit {index_exit} is not in dims {dict(dims)}")
        if rerank_exit is not None and rerank_exit not in dims:
            raise ValueError(f"rerank_exit {rerank_exit} is not in dims {dict(dims)}")
        for kind in (ann, fresh_ann or ann):
            if kind not in ANN_FILES:
                raise ValueError(f"ann must be one of {sorted(ANN_FILES)}, got {kind!r}")
        store = cls()
        store.index_dir = Path(index_dir).expanduser().absolute()
        store.db_path = store.index_dir / DB_NAME
        store.dims = {int(k): int(v) for k, v in dims.items()}
        store.index_exit = int(index_exit)
        store.rerank_exit = None if rerank_exit is None else int(rerank_exit)
        if deep_index and store.rerank_exit is not None and store.rerank_exit != store.index_exit:
            store.deep_exit = store.rerank_exit
        store.model_id = model_id
        store._ann_kinds = {DEEP: ann, FRESH: fresh_ann or ann}
        store._hnsw_params = hnsw_params or HnswParams()
        try:
            store._open()
        except BaseException:
            for index in store._anns.values():
                index.close()
            store._close_connections()
            raise
        return store

    def _open(self) -> None:
        self._make_dir()
        if not self.db_path.exists():
            try:
                os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as err:
                raise StoreError(f"cannot create the index database {self.db_path}: {err}") from err
        with self._errors():
            self._wconn = self._connect(writer=True)
            self._init_schema()
            self._check_model()
            self._read_generations(self._wconn)
            self._load_or_rebuild_anns()

    # -- closing

    def close(self, save: bool = True) -> None:
        """Save the vector indexes that changed (unless ``save`` is False: a process that does
        not hold the index's writer lock leaves the files to the one that does), then release
        everything. Idempotent."""
        if self._closed:
            return
        with self._compactor_lock:
            self._closing = True
            compactor = self._compactor
        if compactor is not None:
            compactor.join()  # it stops at its next batch
        try:
            if save and self._anns and self._wconn is not None:
                try:
                    self.flush()
                except StoreError as err:
                    log.warning("%s: %s", self.index_dir, err)
        finally:
            with self._write_lock:
                self._closed = True
                for ann in self._anns.values():
                    ann.close()
                if self._lexical_pool is not None:
                    self._lexical_pool.shutdown(wait=True)
                self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
