"""``blockwatch-probe`` in Chinese (BLOCKWATCH_LANG, LANG, --lang) and in English
without them; machine output (status --json, exit statuses) the same in both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from probe_agent import i18n
from probe_agent.cli import EXIT_INVALID_INPUT, app
from probe_agent.cli.language import lang_argument

runner = CliRunner()
PROBE = Path(sys.executable).with_name("blockwatch-probe")
# The environment of a volunteer's shell, minus whatever language this machine has.
UNSET = {"BLOCKWATCH_LANG": None, "LANGUAGE": None, "LC_ALL": None, "LC_MESSAGES": None}
CHINESE = {**UNSET, "BLOCKWATCH_LANG": "zh-Hans"}
ENGLISH = {**UNSET, "LANG": "C.UTF-8"}
POSIX_CHINESE = {**UNSET, "LANG": "zh_CN.UTF-8"}


@pytest.fixture(autouse=True)
def _english_afterwards() -> None:
    i18n.use(i18n.ENGLISH)


def _status(tmp_path: Path, env: dict[str, str | None], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, [*args, "status", "--state-dir", str(tmp_path / "fresh")], env=env)
    return result.exit_code, result.output


def test_status_of_a_fresh_probe_in_chinese(tmp_path: Path) -> None:
    code, shown = _status(tmp_path, CHINESE)
    assert code == 0
    lines = shown.splitlines()
    assert lines[0] == "健康状况：     正常"
    assert "上次签到：     从未签到（间隔 300 秒）" in lines
    assert "待发队列：     0 条待发（0 字节），0 条已丢弃，被拒绝：无" in lines
    assert "health" not in shown and "spool" not in shown


def test_status_of_a_fresh_probe_in_english(tmp_path: Path) -> None:
    code, shown = _status(tmp_path, ENGLISH)
    assert code == 0
    assert shown.splitlines() == [
        "health:        ok",
        "probe id:      -",
        "key id:        -",
        "last check-in: never (interval 300 s)",
        "last error:    -",
        "spool:         0 waiting (0 bytes), 0 evicted, rejected: none",
        "collector key: - (0 listed endpoint(s))",
    ]


@pytest.mark.parametrize(
    ("env", "args"),
    [
        (POSIX_CHINESE, ()),
        ({**UNSET, "LC_ALL": "zh_TW.UTF-8", "LANG": "en_US.UTF-8"}, ()),
        (ENGLISH, ("--lang", "zh-Hans")),
        (ENGLISH, ("--lang=zh_CN",)),
    ],
)
def test_lang_and_the_posix_locale_choose_chinese(
    tmp_path: Path, env: dict[str, str | None], args: tuple[str, ...]
) -> None:
    code, shown = _status(tmp_path, env, *args)
    assert code == 0
    assert shown.startswith("健康状况：")


def test_lang_overrides_the_environment(tmp_path: Path) -> None:
    code, shown = _status(tmp_path, CHINESE, "--lang", "en")
    assert code == 0
    assert shown.startswith("health:        ok")


def test_status_json_is_the_same_in_every_language(tmp_path: Path) -> None:
    english = runner.invoke(app, ["status", "--json", "--state-dir", str(tmp_path)], env=ENGLISH)
    chinese = runner.invoke(app, ["status", "--json", "--state-dir", str(tmp_path)], env=CHINESE)
    assert (english.exit_code, chinese.exit_code) == (0, 0)
    assert chinese.stdout == english.stdout
    assert json.loads(chinese.stdout)["healthy"] is True


@pytest.mark.parametrize(
    ("args", "chinese", "english"),
    [
        (["measure", "1.2.3.4"], "无效的域名 '1.2.3.4'：这是 IP 地址，不是域名", "an IP address"),
        (
            ["measure", "ok.example", "--resolver", "not-an-ip"],
            "无效的解析器 'not-an-ip'：应为 IP[:PORT] 或 [IPv6]:PORT",
            "invalid resolver 'not-an-ip'",
        ),
        (
            ["run", "--collector", "https://collector.example", "--cc", "DE"],
            "--cc 和 --asn 须一起使用",
            "--cc and --asn go together",
        ),
        (["run"], "没有指定收集器：请用 --collector URL 指定", "no collector given"),
        (["measure"], "错误：没有给出域名", "error: no domain given"),
    ],
)
def test_invalid_input_in_chinese_exits_2_all_the_same(
    args: list[str], chinese: str, english: str
) -> None:
    translated = runner.invoke(app, args, env=CHINESE)
    untranslated = runner.invoke(app, args, env=ENGLISH)
    assert translated.exit_code == untranslated.exit_code == EXIT_INVALID_INPUT
    assert chinese in translated.output
    assert english in untranslated.output and english not in translated.output


def test_help_in_chinese_and_in_english() -> None:
    chinese = runner.invoke(app, ["--help"], env=CHINESE)
    assert chinese.exit_code == 0
    assert "测量联邦宇宙（Fediverse）实例是否被封锁" in chinese.output
    assert "选项" in chinese.output and "命令" in chinese.output
    assert "显示探针的健康状况" in chinese.output  # a command's summary
    english = runner.invoke(app, ["--help"], env=ENGLISH)
    assert "Measure fediverse instances for signs of blocking" in english.output
    assert "测量" not in english.output


def test_a_commands_help_in_chinese_is_folded_not_cropped() -> None:
    """rich crops a run longer than its column: Chinese has no spaces to break at."""
    shown = runner.invoke(app, ["run", "--help"], env={**CHINESE, "COLUMNS": "80"})
    assert shown.exit_code == 0
    flat = "".join(line.strip("│ ") for line in shown.output.splitlines())
    assert "请尽量用环境变量传入：其他用户能看到命令行。" in flat
    assert "不要在志愿者的机器上使用。" in flat


def test_the_installed_command_speaks_chinese_from_lang(tmp_path: Path) -> None:
    """The real entry point, as a volunteer's shell runs it."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    shown = subprocess.run(
        [str(PROBE), "status", "--state-dir", str(tmp_path)],
        env={**env, "LANG": "zh_CN.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("健康状况：     正常\n")
    helped = subprocess.run(
        [str(PROBE), "measure", "--help"],
        env={**env, "BLOCKWATCH_LANG": "zh-Hans", "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0, helped.stderr
    assert "对 DOMAIN... 测量一次并输出观测结果" in helped.stdout


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (["--lang", "zh-Hans", "status"], "zh-Hans"),
        (["--lang=en", "measure", "x.example"], "en"),
        (["status", "--lang", "zh"], None),  # a command's own options: not the group's
        (["--lang"], None),
        ([], None),
    ],
)
def test_lang_is_read_before_the_command(args: list[str], value: str | None) -> None:
    assert lang_argument(args) == value
