"""configure-gitlab.sh against a fake GitLab that speaks two schema versions and keeps
GitLab's licensing rules and its direct-connection setting (see fake_gitlab.py).

Each test checks the exact mutations that go out and that a second run sends none.
"""
import json
import os
import pathlib
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

from fake_gitlab import AI_GATEWAY_URL, CHAT_SUB_FEATURES, FakeGitLab, MODEL_GID, NO_ACCESS, ROOT_GID

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/configure-gitlab.sh"
PROVISION = ROOT / "deploy/firstboot/provision-duo.sh"
ENDPOINT = "http://10.42.1.12:11434/v1"
GATEWAY = "http://10.42.1.11:5052"
ENTERPRISE = "gid://gitlab/GitlabSubscriptions::AddOnPurchase/1"


def configure(fake, *extra, token="test-token", timeout="30", add_on_timeout="0", script=SCRIPT, api_key=None):
    env = dict(os.environ, GITLAB_TOKEN=token)
    env.pop("FERROLLAMA_API_KEY", None)
    if api_key:
        env["FERROLLAMA_API_KEY"] = api_key
    return subprocess.run(
        [str(script), "--url", fake.url, "--llm-endpoint", ENDPOINT, "--gateway-url", GATEWAY,
         "--poll", "0.1", "--timeout", timeout, "--add-on-timeout", add_on_timeout, *extra],
        env=env, capture_output=True, text=True, timeout=60)


def provision_duo(fake, tmp_path, script=PROVISION):
    """deploy/firstboot/provision-duo.sh with a `gitlab-rails` stand-in: the Ruby it is given
    provisions the fake's add-ons when it runs GitLab's Duo provisioning service."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    rails = bin_dir / "gitlab-rails"
    rails.write_text(f"""#!/bin/sh
[ "$1" = runner ] || exit 64
printf '%s' "$2" > {tmp_path}/runner.rb
if printf '%s' "$2" | grep -q 'ProvisionServices::Duo.new.execute'; then
  curl -fsS -X POST {fake.url}/fake/provision
fi
""")
    rails.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    return subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_old_schema_one_mutation_per_feature_then_nothing():
    with FakeGitLab("old") as fake:
        out = ok(configure(fake))
        assert fake.mutations == [
            ("aiSelfHostedModelCreate", {"name": "ferrollama-mistral", "model": "MISTRAL", "endpoint": ENDPOINT,
                                         "apiToken": "placeholder-ferrollama-needs-none"}),
            ("aiFeatureSettingUpdate", {"feature": "CODE_COMPLETIONS", "provider": "SELF_HOSTED",
                                        "aiSelfHostedModelId": MODEL_GID + "1"}),
            ("aiFeatureSettingUpdate", {"feature": "CODE_GENERATIONS", "provider": "SELF_HOSTED",
                                        "aiSelfHostedModelId": MODEL_GID + "1"}),
            ("aiFeatureSettingUpdate", {"feature": "DUO_CHAT", "provider": "SELF_HOSTED",
                                        "aiSelfHostedModelId": MODEL_GID + "1"}),
            ("userAddOnAssignmentCreate", {"addOnPurchaseId": ENTERPRISE, "userId": ROOT_GID}),
        ]
        assert "no model identifier" in out
        assert fake.setting_updates == [{"disabled_direct_code_suggestions": "true"}]
        assert "configured (6 change(s))" in out

        out = ok(configure(fake))
        assert len(fake.mutations) == 5, fake.mutations[5:]
        assert len(fake.setting_updates) == 1
        assert "direct connections for IDEs: already off" in out and "nothing to change" in out


def test_new_schema_one_mutation_for_all_features_then_nothing():
    with FakeGitLab("new") as fake:
        ok(configure(fake, "--model-name", "mistral:instruct", "--api-token", "sekrit"))
        # 17.9+: the gateway's URL is a Duo setting, and each Duo Chat sub-feature names a model.
        assert fake.mutations == [
            ("duoSettingsUpdate", {"aiGatewayUrl": GATEWAY}),
            ("aiSelfHostedModelCreate", {"name": "ferrollama-mistral", "model": "MISTRAL", "endpoint": ENDPOINT,
                                         "apiToken": "sekrit", "identifier": "custom_openai/mistral:instruct"}),
            ("aiFeatureSettingUpdate", {"features": ["CODE_COMPLETIONS", "CODE_GENERATIONS", "DUO_CHAT",
                                                     *CHAT_SUB_FEATURES],
                                        "provider": "SELF_HOSTED", "aiSelfHostedModelId": MODEL_GID + "1"}),
            ("userAddOnAssignmentCreate", {"addOnPurchaseId": ENTERPRISE, "userId": ROOT_GID}),
        ]
        assert fake.gateway_url == GATEWAY
        for feature in ["duo_chat", *(f.lower() for f in CHAT_SUB_FEATURES)]:
            assert fake.settings[feature] == ("self_hosted", MODEL_GID + "1")

        out = ok(configure(fake, "--model-name", "mistral:instruct", "--api-token", "sekrit"))
        assert len(fake.mutations) == 4, fake.mutations[4:]
        assert len(fake.setting_updates) == 1
        assert "nothing to change" in out


def test_only_what_differs_is_sent():
    with FakeGitLab("new", add_ons=("CODE_SUGGESTIONS", "DUO_ENTERPRISE")) as fake:
        gid = fake.add_model("ferrollama-mistral", ENDPOINT, "custom_openai/mistral:instruct")
        fake.gateway_url = GATEWAY + "/"
        for feature in ["duo_chat", *(f.lower() for f in CHAT_SUB_FEATURES[1:])]:
            fake.settings[feature] = ("self_hosted", gid)
        fake.settings["code_completions"] = ("self_hosted", "gid://gitlab/Ai::SelfHostedModel/99")  # another model
        ok(configure(fake))
        # The Duo Enterprise seat, whatever the order of the purchases.
        assert fake.mutations == [
            ("aiFeatureSettingUpdate", {"features": ["CODE_COMPLETIONS", "CODE_GENERATIONS", CHAT_SUB_FEATURES[0]],
                                        "provider": "SELF_HOSTED", "aiSelfHostedModelId": gid}),
            ("userAddOnAssignmentCreate", {"addOnPurchaseId": "gid://gitlab/GitlabSubscriptions::AddOnPurchase/2",
                                           "userId": ROOT_GID}),
        ]


@pytest.mark.parametrize("schema", ["old", "new"])
def test_a_model_with_another_endpoint_is_updated(schema):
    with FakeGitLab(schema) as fake:
        gid = fake.add_model("ferrollama-mistral", "http://10.9.9.9:11434/v1")
        ok(configure(fake))
        name, value = next(m for m in fake.mutations if m[0] != "duoSettingsUpdate")
        assert name == "aiSelfHostedModelUpdate"
        assert value["id"] == gid and value["endpoint"] == ENDPOINT
        assert ("identifier" in value) == (schema == "new")
        assert fake.mutation_names().count("aiSelfHostedModelCreate") == 0
        assert len(fake.models) == 1 and fake.models[0]["endpoint"] == ENDPOINT
        count = len(fake.mutations)
        ok(configure(fake))
        assert len(fake.mutations) == count


def test_waits_until_gitlab_answers():
    with FakeGitLab("new", unavailable_for=3) as fake:
        out = ok(configure(fake))
        assert fake.version_calls == 4
        assert out.count("waiting for GitLab") == 3
        assert len(fake.mutations) == 4


def test_gives_up_when_gitlab_never_accepts_the_token():
    with FakeGitLab("new") as fake:
        result = configure(fake, token="wrong", timeout="1")
        assert result.returncode != 0
        assert "did not answer" in result.stderr
        assert fake.mutations == []


def test_a_mutation_reporting_errors_stops_the_script():
    with FakeGitLab("new") as fake:
        fake.fail_mutation = "aiFeatureSettingUpdate"
        result = configure(fake)
        assert result.returncode != 0
        assert "aiFeatureSettingUpdate failed" in result.stderr and "refused by the fake" in result.stderr
        assert fake.mutation_names() == ["duoSettingsUpdate", "aiSelfHostedModelCreate", "aiFeatureSettingUpdate"]


@pytest.mark.parametrize("schema", ["old", "new"])
@pytest.mark.parametrize("add_ons, hint", [((), ""), (("CODE_SUGGESTIONS",), "Duo Pro does not include self-hosted models")])
def test_without_duo_enterprise_nothing_is_sent_and_the_message_says_why(schema, add_ons, hint):
    with FakeGitLab(schema, add_ons=add_ons) as fake:
        result = configure(fake)
        assert result.returncode == 1
        assert "no GitLab Duo Enterprise add-on on this instance" in result.stderr and hint in result.stderr
        assert "ferrollama-provision-duo" in result.stderr
        assert NO_ACCESS not in result.stderr  # stopped before GitLab's bare refusal
        assert fake.mutations == []


def test_the_fake_refuses_self_hosted_models_without_duo_enterprise():
    # The premise of the test above: GitLab's check_feature_access! refuses the queries and
    # mutations themselves, and a Duo Pro purchase does not count.
    with FakeGitLab("new", add_ons=("CODE_SUGGESTIONS",)) as fake:
        for call in (lambda: fake.graphql("query { aiSelfHostedModels { nodes { id } } }", {}),
                     lambda: fake.mutate("aiSelfHostedModelCreate", "AiSelfHostedModelCreateInput",
                                         {"name": "m", "model": "MISTRAL", "endpoint": ENDPOINT})):
            with pytest.raises(Exception, match="don't have permission"):
                call()
        assert fake.mutations == []


def test_the_add_on_appears_only_after_provisioning_and_configure_waits_for_it(tmp_path):
    with FakeGitLab("old", provisioned=False) as fake:
        # Not provisioned: a bounded wait, then the message.
        result = configure(fake, add_on_timeout="1")
        assert result.returncode == 1 and "after 1s" in result.stderr
        assert fake.purchases == [] and fake.mutations == []

        # Provisioned while configure waits (the GitLab VM's first boot runs provision-duo.sh).
        results = {}
        asked = fake.purchase_queries
        waiting = threading.Thread(target=lambda: results.update(r=configure(fake, add_on_timeout="30")))
        waiting.start()
        while fake.purchase_queries < asked + 3:
            threading.Event().wait(0.05)
        provisioned = provision_duo(fake, tmp_path)
        assert provisioned.returncode == 0, provisioned.stderr
        assert "GitlabSubscriptions::AddOnPurchases::SelfManaged::ProvisionServices::Duo.new.execute" in \
            (tmp_path / "runner.rb").read_text()
        waiting.join()
        out = ok(results["r"])
        assert "waiting for the Duo Enterprise add-on purchase" in out
        assert fake.mutation_names()[-1] == "userAddOnAssignmentCreate"


def test_gitlab_before_17_6_is_refused_before_anything_is_asked():
    with FakeGitLab("old", version="17.5.3-ee") as fake:
        result = configure(fake)
        assert result.returncode == 1 and "GitLab 17.5.3-ee is too old" in result.stderr
        assert fake.purchase_queries == 0 and fake.mutations == []


def test_17_9_without_a_gateway_url_is_a_clear_failure():
    with FakeGitLab("new") as fake:
        env = dict(os.environ, GITLAB_TOKEN="test-token")
        result = subprocess.run([str(SCRIPT), "--url", fake.url, "--llm-endpoint", ENDPOINT, "--poll", "0.1",
                                 "--add-on-timeout", "0"], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "pass --gateway-url" in result.stderr
        assert fake.mutations == []


def test_the_fake_rejects_the_other_versions_argument():
    # The premise of the two tests above: sending `features` to the old schema (or `feature`
    # to the new one) is an error, so the script must pick the argument by introspection.
    with FakeGitLab("old") as old, FakeGitLab("new") as new:
        for fake, wrong in ((old, {"features": ["DUO_CHAT"]}), (new, {"feature": "DUO_CHAT"})):
            with pytest.raises(Exception, match="Field is not defined"):
                fake.mutate("aiFeatureSettingUpdate", "AiFeatureSettingUpdateInput",
                            dict(wrong, provider="VENDORED"))


def ide_asks_for_direct_access(fake):
    """POST /api/v4/code_suggestions/direct_access as an editor extension does: (status, body)."""
    request = urllib.request.Request(fake.url + "/api/v4/code_suggestions/direct_access", method="POST",
                                     headers={"Authorization": "Bearer test-token"}, data=b"")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.parametrize("schema", ["old", "new"])
def test_direct_connections_off_so_an_ide_is_not_given_the_private_gateway_url(schema):
    with FakeGitLab(schema) as fake:
        # Before: GitLab hands an IDE the gateway's private address.
        assert ide_asks_for_direct_access(fake) == (201, {
            "base_url": AI_GATEWAY_URL, "token": "instance-jwt", "expires_at": 1767225600,
            "headers": {"X-Gitlab-Instance-Id": "fake"}})
        out = ok(configure(fake))
        assert "direct connections for IDEs turned off" in out
        assert fake.setting_updates == [{"disabled_direct_code_suggestions": "true"}]
        # After: refused, so the IDE goes through GitLab.
        assert ide_asks_for_direct_access(fake) == (403, {"message": "403 Forbidden - Direct connections are disabled"})


def test_a_setting_gitlab_drops_is_a_failure_not_a_pass():
    # GitLab answers 200 to a PUT whose parameter it dropped: configure reads the value back.
    with FakeGitLab("new") as fake:
        fake.direct_setting_dropped = True
        result = configure(fake)
        assert result.returncode == 1
        assert "GitLab kept direct connections on (disabled_direct_code_suggestions: false)" in result.stderr
        assert fake.setting_updates == [{"disabled_direct_code_suggestions": "true"}]
        assert ide_asks_for_direct_access(fake)[0] == 201


def test_the_fake_drops_the_setting_without_code_suggestions():
    # The premise of the test above: GitLab's settings API takes disabled_direct_code_suggestions
    # only with code suggestions among the add-ons (Duo Pro counts here, unlike for models).
    for add_ons, kept in (((), False), (("CODE_SUGGESTIONS",), True), (("DUO_ENTERPRISE",), True)):
        with FakeGitLab("new", add_ons=add_ons) as fake:
            assert fake.update_settings({"disabled_direct_code_suggestions": "true"}) == (
                200, {"signup_enabled": True, "disabled_direct_code_suggestions": kept})


def test_the_key_from_the_environment_becomes_the_models_token():
    # As up.sh passes it: FERROLLAMA_API_KEY, off the command line.
    with FakeGitLab("new") as fake:
        ok(configure(fake, api_key="k" * 64))
        [(_, create)] = [m for m in fake.mutations if m[0] == "aiSelfHostedModelCreate"]
        assert create["apiToken"] == "k" * 64


@pytest.mark.parametrize("schema", ["old", "new"])
def test_a_model_without_an_api_token_gets_the_key(schema):
    # GitLab shows whether a model has a token, never the token: one without gets ferrollama's key.
    with FakeGitLab(schema) as fake:
        identifier = "custom_openai/mistral:instruct" if schema == "new" else None
        gid = fake.add_model("ferrollama-mistral", ENDPOINT, identifier, api_token=None)
        ok(configure(fake, "--api-token", "the-key"))
        updates = [v for n, v in fake.mutations if n == "aiSelfHostedModelUpdate"]
        assert len(updates) == 1 and updates[0]["id"] == gid and updates[0]["apiToken"] == "the-key"
        assert fake.models[0]["apiToken"] == "the-key"
        count = len(fake.mutations)
        out = ok(configure(fake, "--api-token", "the-key"))
        assert len(fake.mutations) == count and "self-hosted model ferrollama-mistral: already set" in out
