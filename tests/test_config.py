"""The one config: YAML + WATCHTOWER_* variables, validated with messages that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from watchtower_lib import config
from watchtower_lib.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watchtower.yml"
    path.write_text(text)
    return path


def test_defaults_need_no_file_and_point_at_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = config.load(env={})
    assert settings.store_dir == tmp_path / "store"
    assert settings.alerts_db == tmp_path / "alerts.sqlite"
    assert settings.sensors == ()
    assert not settings.elasticsearch.enabled


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    path = write(tmp_path, "store_dir: st\nsensors:\n  - {name: a, host: h, key_file: keys/id}\n")
    settings = config.load(path, env={})
    assert settings.store_dir == tmp_path / "st"
    assert settings.sensors[0].key_file == tmp_path / "keys" / "id"
    assert settings.config_path == path.resolve()


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "store_dir: st\ndetection:\n  target_alert_rate: 0.05\n")
    settings = config.load(path, env={
        "WATCHTOWER_STORE_DIR": "/srv/store",
        "WATCHTOWER_ES_URL": "http://127.0.0.1:9200",
        "WATCHTOWER_DETECTION__KEEP_MODELS": "9",
    })
    assert settings.store_dir == Path("/srv/store")
    assert settings.elasticsearch.url == "http://127.0.0.1:9200"
    assert settings.detection.keep_models == 9
    assert settings.detection.target_alert_rate == 0.05


def test_config_file_from_environment_variable(tmp_path):
    path = write(tmp_path, "models_dir: m\n")
    assert config.load(env={"WATCHTOWER_CONFIG": str(path)}).models_dir == tmp_path / "m"


@pytest.mark.parametrize("text, message", [
    ("stor_dir: x\n", "unknown setting stor_dir (did you mean 'store_dir'?)"),
    ("sensors:\n  - {name: a, host: h, port: abc}\n", "sensors[0].port must be a whole number, got 'abc'"),
    ("sensors:\n  - {name: a}\n", "sensor 'a' is kind ssh and needs a host"),
    ("sensors:\n  - {host: h}\n", "sensors[0].name is required"),
    ("sensors:\n  - {name: a, kind: ftp, host: h}\n", "sensors[0].kind must be one of 'ssh', 'local'"),
    ("sensors:\n  - {name: a, host: h}\n  - {name: a, host: g}\n", "sensor names must be unique; repeated: a"),
    ("detection:\n  target_alert_rate: 2\n", "target_alert_rate must be between 0 and 1"),
    ("elasticsearch:\n  verify_certs: maybe\n", "elasticsearch.verify_certs must be true or false"),
    ("- a\n- b\n", "expected a mapping of settings at the top level"),
    ("a: [1, 2\n", "not valid YAML"),
])
def test_invalid_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path, env={})
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist .*--config FILE"):
        config.load(tmp_path / "nope.yml", env={})


def test_unknown_section_in_environment_is_an_error():
    with pytest.raises(ConfigError, match="WATCHTOWER_ELASTIC__URL"):
        config.load(env={"WATCHTOWER_ELASTIC__URL": "x"})


def test_secret_and_tool_variables_are_not_read_as_settings():
    """The documented secret variables (``api_key_env: WATCHTOWER_ES_API_KEY``) and the variables of
    scripts/es-node and the PDF renderer sit beside settings in the environment; a typo still fails."""
    env = {"WATCHTOWER_ES_API_KEY": "k", "WATCHTOWER_SMTP_PASSWORD": "p", "WATCHTOWER_ES_VERSION": "8.19.8",
           "WATCHTOWER_CHROMIUM": "/usr/bin/chromium", "WATCHTOWER_STORE_DIR": "/srv/store"}
    assert str(config.load(env=env).store_dir) == "/srv/store"
    with pytest.raises(ConfigError, match="did you mean 'store_dir'"):
        config.load(env={"WATCHTOWER_STORE_DRI": "/srv/store"})


def test_password_comes_only_from_the_named_variable(tmp_path, monkeypatch):
    path = write(tmp_path, "sensors:\n  - {name: a, host: h, password_env: SENSOR_A_PW}\n")
    sensor = config.load(path, env={}).sensor("a")
    monkeypatch.delenv("SENSOR_A_PW", raising=False)
    with pytest.raises(ConfigError, match="SENSOR_A_PW"):
        sensor.password()
    monkeypatch.setenv("SENSOR_A_PW", "s3cret")
    assert sensor.password() == "s3cret"
    assert "s3cret" not in repr(sensor)


def test_unknown_sensor_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "sensors:\n  - {name: edge, host: h}\n")
    with pytest.raises(ConfigError, match=r"no sensor named 'core' \(sensors: edge\)"):
        config.load(path, env={}).sensor("core")


def test_importing_the_package_does_no_work():
    import subprocess
    import sys

    code = ("import sys, watchtower_lib; "
            "heavy = [m for m in ('pandas', 'pyarrow', 'sklearn', 'yaml', 'paramiko') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_readme_example_is_a_valid_config(tmp_path):
    """The YAML block users copy from README.md loads, with the sensors and schedule it shows."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert block is not None
    settings = config.load(write(tmp_path, block.group(1)), env={})
    assert [(s.name, s.kind) for s in settings.sensors] == [("edge-01", "ssh"), ("dmz-02", "ssh"),
                                                            ("this-box", "local")]
    assert settings.sensor("dmz-02").password_env == "WATCHTOWER_DMZ_PASSWORD"
    assert settings.elasticsearch.enabled
    assert [job.name for job in settings.schedule] == ["collect", "train", "detect", "report"]
