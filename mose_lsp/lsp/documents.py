"""Open documents: unsaved buffers indexed on each folder's edit lane (debounced per
document), restored from disk when closed, and re-applied after a scan rewrote their file."""

from __future__ import annotations

import asyncio
import functools
import logging
from urllib.parse import unquote

from ..protocol import DOCUMENT_INDEXED
from .folders import Doc, Folder, same_as_disk
from .rpc import RequestFailed

log = logging.getLogger(__name__)


class Documents:
    """Mixed into :class:`~mose_lsp.lsp.session.MoseService`: the open documents."""

    def did_open(self, uri: str, version: int) -> None:
        found = self.locate(uri)
        if found is None:
            return  # outside every workspace folder
        folder, rel = found
        self.docs[uri] = Doc(uri, folder.uri, rel, version)
        folder.touch()
        self.debouncer.schedule(uri, lambda: self._index_doc(uri), 0.0)

    def did_change(self, uri: str, version: int) -> None:
        doc = self.docs.get(uri)
        if doc is None:
            return
        doc.version = version
        folder = self.folders.get(doc.folder_uri)
        if folder is not None:
            folder.touch()
        self.debouncer.schedule(uri, lambda: self._index_doc(uri))

    def did_close(self, uri: str) -> None:
        self.debouncer.cancel(uri)
        doc = self.docs.pop(uri, None)
        folder = self.folders.get(doc.folder_uri) if doc else None
        if doc is None or folder is None or not doc.overlay:
            return
        folder.touch()

        def restore() -> None:
            if folder.index is not None and not folder.stop.is_set():
                folder.index.update_paths([doc.rel])  # the disk version comes back

        async def run() -> None:
            await self.run(folder.editor, restore)
            folder.deep_wake.set()

        folder.spawn(run())

    def relocate_documents(self) -> None:
        """Open documents follow folder changes: a document now inside a (new or innermost)
        folder is indexed there; one outside every folder is no longer tracked."""
        for document in list(self.ls.workspace.text_documents.values()):
            uri = document.uri
            doc = self.docs.get(uri)
            found = self.locate(uri)
            if found is None:
                if doc is not None:
                    self.debouncer.cancel(uri)
                    del self.docs[uri]
                continue
            folder = found[0]
            if doc is None or doc.folder_uri != folder.uri:
                self.did_open(uri, document.version or 0)

    def text(self, uri: str) -> str | None:
        """The client's current text of an open document."""
        document = self.ls.workspace.text_documents.get(unquote(uri)) \
            or self.ls.workspace.text_documents.get(uri)
        return None if document is None else document.source

    async def _index_doc(self, uri: str) -> None:
        doc = self.docs.get(uri)
        folder = self.folders.get(doc.folder_uri) if doc else None
        if doc is None or folder is None:
            return
        try:
            await asyncio.shield(folder.opened)
        except RequestFailed:  # the folder could not be opened (the user was told)
            return
        version, text = doc.version, self.text(uri)
        if text is None:
            return

        def job() -> int | None:
            index = folder.index
            if index is None or folder.stop.is_set() or self.docs.get(uri) is not doc \
                    or doc.version != version:
                return None  # closed, or a newer version is coming: drop this one
            if folder.ignored(doc.rel) or len(text.encode("utf-8")) > index.settings.max_file_bytes:
                return None  # the scan would not index it either
            if not doc.overlay and same_as_disk(folder.root / doc.rel, text):
                return 0  # the buffer is the disk file: the index already has it
            n = index.update_text(doc.rel, text)
            doc.overlay = True
            return n

        chunks = await self.run(folder.editor, job)
        if chunks is None:
            return
        doc.indexed_version = version
        folder.deep_wake.set()
        self.notify(DOCUMENT_INDEXED, {"uri": uri, "version": version, "chunks": chunks})

    def reapply_overlays(self, folder: Folder, rels: set[str] | None = None) -> None:
        """Buffers whose file a scan or batch just rewrote from disk go back in."""
        for doc in self.docs.values():
            if doc.folder_uri == folder.uri and doc.overlay and (rels is None or doc.rel in rels):
                doc.indexed_version = None
                self.debouncer.schedule(doc.uri, functools.partial(self._index_doc, doc.uri), 0.0)
