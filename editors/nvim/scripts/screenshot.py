"""Record the Neovim flow as a PNG: Neovim with the plugin runs in a fixed-size tmux pane,
``:Mose search ...`` fills the quickfix list, the first result is opened, and the pane
(``tmux capture-pane -e``, colours included) is drawn with Pillow.

    python editors/nvim/scripts/screenshot.py --workspace WS --out editors/nvim/doc/screenshot.png

WS is any folder to search (the README's picture uses the test fixture workspace); needs tmux,
Pillow, a Neovim 0.11+ (``--nvim``, default: ``nvim`` on PATH) and ``mose`` (``--mose``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PLUGIN = Path(__file__).resolve().parents[1]
COLS, ROWS = 100, 30
SESSION = "mose-screenshot"

INIT = """\
set nocompatible
set rtp^={plugin}
syntax on
filetype plugin indent on
set termguicolors number cursorline laststatus=2 noswapfile shortmess+=I
lua << EOF
vim.g.mose = {{ cmd = {{ '{mose}', 'serve' }}, settings = {{ indexDir = '{index}', threads = 2{model} }} }}
vim.lsp.enable('mose')
EOF
runtime plugin/mose.lua
autocmd User MoseResults call writefile([len(getqflist())], '{marker}')
"""

# xterm's 16 colours (Neovim's default scheme sets 24-bit colours; these cover the rest).
ANSI16 = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16), (36, 114, 200), (188, 63, 188),
    (17, 168, 205), (229, 229, 229), (102, 102, 102), (241, 76, 76), (35, 209, 139),
    (245, 245, 67), (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]
DEFAULT_FG, DEFAULT_BG = (224, 226, 234), (20, 22, 27)  # Neovim's default dark Normal


def xterm256(n: int) -> tuple[int, int, int]:
    if n < 16:
        return ANSI16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return steps[n // 36], steps[(n // 6) % 6], steps[n % 6]
    v = 8 + (n - 232) * 10
    return v, v, v


def parse_ansi(text: str, cols: int, rows: int):
    """Cells of the pane: rows of (char, fg, bg, bold) from ``capture-pane -e -p``."""
    grid = []
    sgr = re.compile(r"\x1b\[([0-9;:]*)m")
    for line in text.split("\n")[:rows]:
        fg, bg, bold, reverse = None, None, False, False
        cells = []
        pos = 0
        for m in sgr.finditer(line + "\x1b[m"):
            for ch in line[pos:m.start()]:
                f, b = (bg, fg) if reverse else (fg, bg)
                cells.append((ch, f or (DEFAULT_BG if reverse else DEFAULT_FG),
                              b or (DEFAULT_FG if reverse else DEFAULT_BG), bold))
            pos = m.end()
            params = [int(p) if p else 0 for p in re.split("[;:]", m.group(1))] or [0]
            i = 0
            while i < len(params):
                p = params[i]
                if p == 0:
                    fg, bg, bold, reverse = None, None, False, False
                elif p == 1:
                    bold = True
                elif p == 22:
                    bold = False
                elif p == 7:
                    reverse = True
                elif p == 27:
                    reverse = False
                elif 30 <= p <= 37 or 90 <= p <= 97:
                    fg = ANSI16[p - 30 if p < 90 else p - 90 + 8]
                elif 40 <= p <= 47 or 100 <= p <= 107:
                    bg = ANSI16[p - 40 if p < 100 else p - 100 + 8]
                elif p == 39:
                    fg = None
                elif p == 49:
                    bg = None
                elif p in (38, 48) and i + 1 < len(params):
                    if params[i + 1] == 5 and i + 2 < len(params):
                        color = xterm256(params[i + 2])
                        i += 2
                    elif params[i + 1] == 2 and i + 4 < len(params):
                        color = tuple(params[i + 2:i + 5])
                        i += 4
                    else:
                        color = None
                    if p == 38:
                        fg = color
                    else:
                        bg = color
                i += 1
        grid.append(cells[:cols])
    return grid


def render(grid, out: Path, cols: int, rows: int) -> None:
    font_dir = Path("/usr/share/fonts/truetype/dejavu")
    size = 14
    try:
        regular = ImageFont.truetype(str(font_dir / "DejaVuSansMono.ttf"), size)
        bold = ImageFont.truetype(str(font_dir / "DejaVuSansMono-Bold.ttf"), size)
    except OSError:
        regular = bold = ImageFont.load_default()
    cw = round(regular.getlength("M"))
    ch = size + 4
    pad = 10
    img = Image.new("RGB", (cols * cw + 2 * pad, rows * ch + 2 * pad), DEFAULT_BG)
    draw = ImageDraw.Draw(img)
    for y, cells in enumerate(grid):
        for x, (char, fg, bg, is_bold) in enumerate(cells):
            left, top = pad + x * cw, pad + y * ch
            if bg != DEFAULT_BG:
                draw.rectangle([left, top, left + cw - 1, top + ch - 1], fill=bg)
            if char.strip():
                draw.text((left, top + 1), char, font=bold if is_bold else regular, fill=fg)
    img = img.quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    img.save(out, optimize=True)


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--nvim", default=shutil.which("nvim") or "nvim")
    ap.add_argument("--mose", default=shutil.which("mose") or "mose")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--query", default="edit distance between two strings")
    ap.add_argument("--open", default="web/timing.js", help="file shown before the search")
    args = ap.parse_args()
    # The pane starts in the workspace: make the given paths absolute.
    args.nvim = shutil.which(args.nvim) and str(Path(shutil.which(args.nvim)).resolve()) or args.nvim
    args.mose = shutil.which(args.mose) and str(Path(shutil.which(args.mose)).absolute()) or args.mose
    args.workspace = args.workspace.resolve()

    with tempfile.TemporaryDirectory() as tmp:
        init = Path(tmp) / "init.vim"
        model = f", model = '{args.model}'" if args.model else ""
        marker = Path(tmp) / "results.txt"
        init.write_text(INIT.format(plugin=PLUGIN, mose=args.mose, index=Path(tmp) / "index",
                                    model=model, marker=marker))
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True, check=False)
        tmux("-f", "/dev/null", "new-session", "-d", "-s", SESSION, "-x", str(COLS), "-y",
             str(ROWS), "-c", str(args.workspace),
             shlex.join(["env", "TERM=tmux-256color", f"XDG_STATE_HOME={tmp}/state", args.nvim,
                         "-u", str(init), "-i", "NONE", args.open]))
        tmux("set-option", "-t", SESSION, "-g", "status", "off")
        tmux("set-option", "-t", SESSION, "-ga", "terminal-overrides", ",*:RGB")
        try:
            time.sleep(2)
            status_file = Path(tmp) / "status.txt"
            # Wait for the index: ask the server until every folder is ready.
            probe = (":lua local c = vim.lsp.get_clients({name='mose'})[1]; "
                     "local r = c and c.initialized and c:request_sync('workspace/executeCommand', "
                     "{command='mose.status', arguments={}}, 5000); "
                     f"vim.fn.writefile({{r and r.result and r.result.folders[1] and "
                     f"r.result.folders[1].state or 'none'}}, '{status_file}')")
            for _ in range(120):
                tmux("send-keys", "-t", SESSION, probe, "Enter")
                time.sleep(1)
                if status_file.exists() and status_file.read_text().strip() == "ready":
                    break
            else:
                raise SystemExit("the index did not become ready")
            tmux("send-keys", "-t", SESSION, ":echo ''", "Enter")
            tmux("send-keys", "-t", SESSION, f":Mose search {args.query}", "Enter")
            for _ in range(60):
                time.sleep(1)
                if marker.exists():
                    break
            if not marker.exists() or marker.read_text().strip() in ("", "0"):
                raise SystemExit(f"no results for {args.query!r}")
            time.sleep(0.5)
            tmux("send-keys", "-t", SESSION, ":cfirst", "Enter")  # open the first result
            time.sleep(1.5)
            screen = tmux("capture-pane", "-t", SESSION, "-e", "-p")
        finally:
            subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True, check=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render(parse_ansi(screen, COLS, ROWS), args.out, COLS, ROWS)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
