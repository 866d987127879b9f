"""The boot menu grub2 builds from grub.cfg, and which entry it boots by default: what the
bootloader step needs to make the chosen kernel the default on guests without grubby."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

# menuentry 'Title' --class ... $menuentry_id_option 'gnulinux-6.1.0-18-amd64-advanced-UUID' {
_OPEN = re.compile(r"^\s*(menuentry|submenu)\s+(?P<args>.*?)\s*\{\s*$")
_LINUX = re.compile(r"^\s*linux(?:efi|16)?\s+(\S+)")
_RECOVERY = re.compile(r"\(recovery mode\)|-recovery-|\bsingle\b|systemd\.unit=rescue")
_DEFAULT = re.compile(r"^GRUB_DEFAULT=(.*)$", re.M)
_SAVED_ENTRY = re.compile(r"^saved_entry=(.*)$", re.M)
# Legacy grub (menu.lst, grub.conf): `default N` counts the `title` stanzas from 0.
_LEGACY_TITLE = re.compile(r"^\s*title\b")
_LEGACY_KERNEL = re.compile(r"^\s*kernel\s+(\S+)")
_LEGACY_DEFAULT = re.compile(r"^default\b.*$", re.M)


@dataclass
class MenuEntry:
    title: str
    id: str = ""
    kernel: str = ""  # the image's file name (vmlinuz-VER), "" for a submenu
    recovery: bool = False
    children: list[MenuEntry] = field(default_factory=list)

    @property
    def name(self) -> str:
        """How GRUB_DEFAULT and saved_entry name it: the id where it has one, else the title."""
        return self.id or self.title


def _entry(kind: str, args: str) -> MenuEntry:
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    title = words[0] if words else ""
    ident = ""
    for i, word in enumerate(words[:-1]):
        if word in ("$menuentry_id_option", "--id"):
            ident = words[i + 1]
    if not ident:
        ident = next((w.removeprefix("--id=") for w in words if w.startswith("--id=")), "")
    return MenuEntry(title, ident, recovery=kind == "menuentry" and bool(_RECOVERY.search(title + " " + ident)))


def parse_menu(cfg: str) -> list[MenuEntry]:
    """The top-level entries of grub.cfg, submenus with their entries. Other blocks (functions,
    if/fi are not braces) are skipped; a '}' alone on its line closes the innermost block."""
    top: list[MenuEntry] = []
    stack: list[MenuEntry | None] = []  # None: a block that is not a menu entry
    for line in cfg.splitlines():
        opened = _OPEN.match(line)
        if opened:
            entry = _entry(opened.group(1), opened.group("args"))
            parent = next((e for e in reversed(stack) if e is not None), None)
            (parent.children if parent else top).append(entry)
            stack.append(entry)
        elif line.rstrip().endswith("{"):
            stack.append(None)
        elif line.strip() == "}" and stack:
            stack.pop()
        elif stack and stack[-1] is not None and (linux := _LINUX.match(line)):
            entry = stack[-1]
            entry.kernel = linux.group(1).rsplit("/", 1)[-1]
            entry.recovery = entry.recovery or bool(_RECOVERY.search(line))
    return top


def resolve(menu: list[MenuEntry], spec: str) -> MenuEntry | None:
    """The entry GRUB_DEFAULT or saved_entry names: 'N', 'ID', 'TITLE', or a submenu path 'A>B'."""
    entries, found = menu, None
    for part in (spec or "0").split(">"):
        if part.isdigit():  # grub reads a number as a position first
            found = entries[int(part)] if int(part) < len(entries) else None
        else:
            found = next((e for e in entries if part in (e.id, e.title)), None)
        if found is None:
            return None
        entries = found.children
    return found


def path_to_kernel(menu: list[MenuEntry], image: str) -> str | None:
    """The 'SUBMENU>ENTRY' name that boots `image` (vmlinuz-VER) normally; None when no entry does."""
    for entry in menu:
        if entry.kernel == image and not entry.recovery:
            return entry.name
        inner = path_to_kernel(entry.children, image)
        if inner:
            return f"{entry.name}>{inner}"
    return None


def grub_default(default_grub: str) -> str:
    """GRUB_DEFAULT of /etc/default/grub, unquoted; grub's own default is 0."""
    found = _DEFAULT.findall(default_grub)
    if not found:
        return "0"
    words = shlex.split(found[-1], comments=True) if found[-1].strip() else []
    return words[0] if words else "0"


def saved_entry(grubenv: str) -> str:
    found = _SAVED_ENTRY.findall(grubenv)
    return found[-1].strip() if found else ""


def with_saved_default(default_grub: str) -> str:
    """/etc/default/grub booting the saved entry (GRUB_DEFAULT=saved), its other lines kept."""
    if _DEFAULT.search(default_grub):
        return _DEFAULT.sub("GRUB_DEFAULT=saved", default_grub)
    return default_grub + ("" if default_grub.endswith("\n") or not default_grub else "\n") + "GRUB_DEFAULT=saved\n"


def legacy_with_default(menu_lst: str, image: str) -> str | None:
    """menu.lst (grub.conf) with `default N` naming the first stanza that boots `image`
    (virt-v2v's grub1 set_default_kernel); None when no stanza boots it."""
    index, target = -1, None
    for line in menu_lst.splitlines():
        if _LEGACY_TITLE.match(line):
            index += 1
        elif index >= 0 and (kernel := _LEGACY_KERNEL.match(line)) and kernel.group(1).rsplit("/", 1)[-1] == image:
            target = index
            break
    if target is None:
        return None
    if _LEGACY_DEFAULT.search(menu_lst):
        return _LEGACY_DEFAULT.sub(f"default {target}", menu_lst, count=1)
    return f"default {target}\n{menu_lst}"
