"""Client settings: pulled with ``workspace/configuration``, pushed with
``workspace/didChangeConfiguration``, and the registrations that depend on them."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException

from ..protocol import reopen_needed, resolve_config, section
from .folders import folder_settings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 10.0  # a client request (configuration, registration) left unanswered


class SettingsSync:
    """Mixed into :class:`~mose_lsp.lsp.session.MoseService`: the configuration's life."""

    async def pull_configuration(self, initial: bool = False) -> None:
        try:
            result = await asyncio.wait_for(self.ls.workspace_configuration_async(
                lsp.ConfigurationParams(items=[lsp.ConfigurationItem(section="mose")])),
                REQUEST_TIMEOUT_S)
        except (JsonRpcException, asyncio.TimeoutError) as err:
            log.info("workspace/configuration failed: %s", err)
            return
        value = result[0] if result else None
        await self.set_client_settings(value if isinstance(value, dict) else None, initial)

    async def settings_pushed(self, settings: Any) -> None:
        caps = self.ls.client_capabilities
        if isinstance(settings, dict) and "mose" in settings:
            await self.set_client_settings(settings["mose"])
        elif caps and caps.workspace and caps.workspace.configuration:
            await self.pull_configuration()

    async def set_client_settings(self, data: Any, initial: bool = False) -> None:
        self.client_settings = section(data)
        new = resolve_config(self.base, self.init_options, self.client_settings)
        old, self.config = self.config, new
        if initial:
            return
        self.warn(new.warnings)
        self.debouncer.delay_s = new.settings.debounce_ms / 1000
        if reopen_needed(old.settings, new.settings):
            log.info("index settings changed: reopening every folder")
            for folder in list(self.folders.values()):
                await self.restart_folder(folder)
            return
        mode_changed = old.options.watcher != new.options.watcher
        if mode_changed:
            await self.register_file_watching()
        for folder in list(self.folders.values()):
            folder.settings = folder_settings(new.settings, folder.root)
            if folder.index is not None:
                folder.index.settings = folder.settings
            if folder.batcher is not None:
                folder.batcher.delay_s = new.settings.debounce_ms / 1000
            if mode_changed:
                await self.stop_watching(folder)
                await self.start_watching(folder)
            if new.settings.background_deep:
                folder.deep_wake.set()

    async def register(self, method: str, options: Any) -> bool:
        """Register a capability dynamically; False when the client refused or did not answer."""
        try:
            await asyncio.wait_for(self.ls.client_register_capability_async(
                lsp.RegistrationParams(registrations=[lsp.Registration(
                    id=f"mose-{uuid.uuid4().hex[:8]}", method=method,
                    register_options=options)])), REQUEST_TIMEOUT_S)
            return True
        except (JsonRpcException, asyncio.TimeoutError) as err:
            log.info("could not register %s: %s", method, err)
            return False

    async def register_file_watching(self) -> None:
        mode = self.config.options.watcher
        caps = self.ls.client_capabilities
        ws = caps.workspace if caps else None
        dynamic = bool(ws and ws.did_change_watched_files
                       and ws.did_change_watched_files.dynamic_registration)
        if mode in ("auto", "client") and dynamic and not self.client_watch:
            self.client_watch = await self.register(
                lsp.WORKSPACE_DID_CHANGE_WATCHED_FILES,
                lsp.DidChangeWatchedFilesRegistrationOptions(
                    watchers=[lsp.FileSystemWatcher(glob_pattern="**/*")]))

    def watch_mode(self) -> str:
        mode = self.config.options.watcher
        if mode == "auto":
            return "client" if self.client_watch else "watchdog"
        return mode
