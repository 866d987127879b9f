"""Windows first boot: the work a conversion cannot do offline (installing drivers into the
driver store, the guest agent, uninstalling the old hypervisor's tools, the network settings) runs
at the guest's first boot, one script per boot, from a service the operator provides (rhsrvany.exe
or pvvxsvc.exe: no Windows binary ships with v2v).

Layout, as virt-v2v's (so its documentation and the operator's habits carry over):
C:\\Program Files\\Guestfs\\Firstboot\\ holds firstboot.bat, the service binary, scripts\\ (run in name
order), scripts-done\\, scripts-failed\\, Temp\\ (PowerShell scripts and installers) and log.txt."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import guestfs

from v2v.errors import V2VError
from v2v.services.convert.guestpath import guest_path
from v2v.services.convert.registry import REG_DWORD, REG_SZ, Hive
from v2v.v1 import types_pb2 as pb

SERVICE_BINARIES = ("rhsrvany.exe", "pvvxsvc.exe")
TOOLS_DATADIR = Path("/usr/share/virt-tools")
WIN_DIR = r"C:\Program Files\Guestfs\Firstboot"
GUEST_DIR = "/Program Files/Guestfs/Firstboot"
# A script that exits with this asks to run again at the next boot (a reboot is pending, an
# installer is busy); after MAX_TRIES it is moved to scripts-failed and the log says so.
RETRY_EXIT = 249
NO_REBOOT_EXIT = 250
MAX_TRIES = 5

_FIRSTBOOT_BAT = r"""@echo off
rem v2v first boot: one script per boot, in name order; exit 249 = again at the next boot
rem (at most {max_tries} tries), 250 = go on without a reboot. The log is log.txt here.
setlocal EnableDelayedExpansion
set "fb={win_dir}"
set "log=%fb%\log.txt"
for %%d in (scripts-done scripts-failed tries) do if not exist "%fb%\%%d" mkdir "%fb%\%%d"
echo %date% %time% v2v firstboot: start >>"%log%"
for %%f in ("%fb%\scripts\*.bat") do (
  set n=0
  if exist "%fb%\tries\%%~nf" set /p n=<"%fb%\tries\%%~nf"
  set /a n=!n!+1
  >"%fb%\tries\%%~nf" echo !n!
  echo %date% %time% running %%~nxf, try !n! of {max_tries} >>"%log%"
  call "%%f" >>"%log%" 2>&1
  set rc=!errorlevel!
  echo %date% %time% %%~nxf exited with !rc! >>"%log%"
  if !rc! equ {retry} (
    if !n! geq {max_tries} (
      echo %date% %time% %%~nxf gave up after !n! tries >>"%log%"
      move "%%f" "%fb%\scripts-failed\" >nul
    )
  ) else (
    if !rc! neq 0 if !rc! neq {no_reboot} echo %date% %time% %%~nxf FAILED with !rc! >>"%log%"
    move "%%f" "%fb%\scripts-done\" >nul
  )
  if !rc! neq {no_reboot} (
    shutdown /r /t 0 /y
    exit /b 0
  )
)
echo %date% %time% v2v firstboot: all scripts done >>"%log%"
type nul >"%fb%\complete"
"%fb%\{service}" -s firstboot uninstall
"""


def service_binary(option: str) -> Path | None:
    """The operator's first-boot service: in the option's directory, else $VIRT_TOOLS_DATA_DIR,
    else /usr/share/virt-tools (where virt-v2v looks)."""
    directory = Path(option or os.environ.get("VIRT_TOOLS_DATA_DIR") or TOOLS_DATADIR)
    return next((directory / name for name in SERVICE_BINARIES if (directory / name).is_file()), None)


def missing_service(option: str) -> V2VError:
    directory = option or os.environ.get("VIRT_TOOLS_DATA_DIR") or str(TOOLS_DATADIR)
    return V2VError(f"this Windows guest needs first-boot scripts, and neither rhsrvany.exe nor pvvxsvc.exe is in "
                    f"{directory}: build rhsrvany (https://github.com/rwmjones/rhsrvany, GPLv2+) or take it from "
                    "Fedora's mingw32-srvany, put it there (or set VIRT_TOOLS_DATA_DIR to its directory) and "
                    "convert again; nothing was written", pb.ERROR_CODE_UNSUPPORTED)


def guest_dir(g: guestfs.GuestFS) -> str:
    """The directory as the guest spells the parts that exist (NTFS through ntfs-3g is
    case-sensitive; Windows is not)."""
    return guest_path(g, GUEST_DIR)


def script_name(prio: int, seq: int, name: str) -> str:
    """scripts\\PPPP-NNNN-name.bat: priority first (lower runs earlier), then the order added."""
    return f"{prio:04d}-{seq:04d}-{re.sub(r'[^a-zA-Z0-9_]', '-', name)[:60]}.bat"


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


@dataclass
class Script:
    name: str
    prio: int
    batch: str  # the .bat's text
    powershell: str = ""  # a .ps1 the .bat runs, when set


@dataclass
class Firstboot:
    """The scripts a conversion plans, written by `install()` once every check has passed."""

    scripts: list[Script] = field(default_factory=list)

    def add(self, name: str, batch: str, prio: int = 5000) -> None:
        self.scripts.append(Script(name, prio, batch))

    def add_powershell(self, name: str, ps1: str, prio: int = 5000) -> None:
        batch = f'powershell.exe -ExecutionPolicy ByPass -NoProfile -File "{WIN_DIR}\\Temp\\{name}.ps1"\n' \
                "exit /b %errorlevel%\n"
        self.scripts.append(Script(name, prio, batch, ps1))

    def install(self, g: guestfs.GuestFS, system: Hive, ccs: str, binary: Path) -> list[str]:
        """Writes the directory, the scripts and the service into the guest; returns the script
        file names in the order they will run."""
        top = guest_dir(g)
        for sub in ("scripts", "scripts-done", "Temp"):
            g.mkdir_p(f"{top}/{sub}")
        g.upload(str(binary), f"{top}/{binary.name}")
        g.write(f"{top}/firstboot.bat", crlf(_FIRSTBOOT_BAT.format(
            win_dir=WIN_DIR, service=binary.name, retry=RETRY_EXIT, no_reboot=NO_REBOOT_EXIT, max_tries=MAX_TRIES)))
        names = []
        for seq, script in enumerate(self.scripts, 1):
            name = script_name(script.prio, seq, script.name)
            if script.powershell:
                g.write(f"{top}/Temp/{script.name}.ps1", crlf(script.powershell))
            g.write(f"{top}/scripts/{name}", crlf(script.batch))
            names.append(name)
        key = f"{ccs}\\Services\\firstboot"
        why = "the first-boot service"
        system.set(key, "Type", REG_DWORD, 0x10, why)
        system.set(key, "Start", REG_DWORD, 2, why)
        system.set(key, "ErrorControl", REG_DWORD, 1, why)
        system.set(key, "ImagePath", REG_SZ, f"{WIN_DIR}\\{binary.name} -s firstboot", why)
        system.set(key, "DisplayName", REG_SZ, "Virt tools firstboot service", why)
        system.set(key, "ObjectName", REG_SZ, "LocalSystem", why)
        system.set(f"{key}\\Parameters", "CommandLine", REG_SZ, f'cmd /c "{WIN_DIR}\\firstboot.bat"', why)
        system.set(f"{key}\\Parameters", "PWD", REG_SZ, WIN_DIR, why)
        return sorted(names)
