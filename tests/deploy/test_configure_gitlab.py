"""configure-gitlab.sh against a fake GitLab that speaks two schema versions.

Each test checks the exact mutations that go out and that a second run sends none.
"""
import os
import pathlib
import subprocess

import pytest

from fake_gitlab import FakeGitLab, MODEL_GID, ROOT_GID

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy/configure-gitlab.sh"
ENDPOINT = "http://10.42.1.12:11434/v1"
ENTERPRISE = "gid://gitlab/GitlabSubscriptions::AddOnPurchase/1"


def configure(fake, *extra, token="test-token", timeout="30"):
    env = dict(os.environ, GITLAB_TOKEN=token)
    return subprocess.run(
        [str(SCRIPT), "--url", fake.url, "--llm-endpoint", ENDPOINT, "--poll", "0.1", "--timeout", timeout,
         *extra],
        env=env, capture_output=True, text=True, timeout=60)


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
        assert "configured (5 change(s))" in out

        out = ok(configure(fake))
        assert len(fake.mutations) == 5, fake.mutations[5:]
        assert "nothing to change" in out


def test_new_schema_one_mutation_for_all_features_then_nothing():
    with FakeGitLab("new") as fake:
        ok(configure(fake, "--model-name", "mistral:instruct", "--api-token", "sekrit"))
        assert fake.mutations == [
            ("aiSelfHostedModelCreate", {"name": "ferrollama-mistral", "model": "MISTRAL", "endpoint": ENDPOINT,
                                         "apiToken": "sekrit", "identifier": "custom_openai/mistral:instruct"}),
            ("aiFeatureSettingUpdate", {"features": ["CODE_COMPLETIONS", "CODE_GENERATIONS", "DUO_CHAT"],
                                        "provider": "SELF_HOSTED", "aiSelfHostedModelId": MODEL_GID + "1"}),
            ("userAddOnAssignmentCreate", {"addOnPurchaseId": ENTERPRISE, "userId": ROOT_GID}),
        ]
        assert fake.settings["duo_chat"] == ("self_hosted", MODEL_GID + "1")
        assert "duo_chat_explain_code" not in fake.settings  # left alone

        out = ok(configure(fake, "--model-name", "mistral:instruct", "--api-token", "sekrit"))
        assert len(fake.mutations) == 3, fake.mutations[3:]
        assert "nothing to change" in out


def test_only_what_differs_is_sent():
    with FakeGitLab("new", add_ons=("CODE_SUGGESTIONS", "DUO_ENTERPRISE")) as fake:
        gid = fake.add_model("ferrollama-mistral", ENDPOINT, "custom_openai/mistral:instruct")
        fake.settings["duo_chat"] = ("self_hosted", gid)
        fake.settings["code_completions"] = ("self_hosted", "gid://gitlab/Ai::SelfHostedModel/99")  # another model
        ok(configure(fake))
        # Duo Enterprise is preferred over Duo Pro (CODE_SUGGESTIONS), whatever the order.
        assert fake.mutations == [
            ("aiFeatureSettingUpdate", {"features": ["CODE_COMPLETIONS", "CODE_GENERATIONS"],
                                        "provider": "SELF_HOSTED", "aiSelfHostedModelId": gid}),
            ("userAddOnAssignmentCreate", {"addOnPurchaseId": "gid://gitlab/GitlabSubscriptions::AddOnPurchase/2",
                                           "userId": ROOT_GID}),
        ]


@pytest.mark.parametrize("schema", ["old", "new"])
def test_a_model_with_another_endpoint_is_updated(schema):
    with FakeGitLab(schema) as fake:
        gid = fake.add_model("ferrollama-mistral", "http://10.9.9.9:11434/v1")
        ok(configure(fake))
        name, value = fake.mutations[0]
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
        assert len(fake.mutations) == 3


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
        assert fake.mutation_names() == ["aiSelfHostedModelCreate", "aiFeatureSettingUpdate"]


def test_no_duo_add_on_is_a_clear_failure_after_the_model_settings():
    with FakeGitLab("old", add_ons=()) as fake:
        result = configure(fake)
        assert result.returncode != 0
        assert "no GitLab Duo add-on" in result.stderr
        assert fake.mutation_names() == ["aiSelfHostedModelCreate"] + ["aiFeatureSettingUpdate"] * 3


def test_the_fake_rejects_the_other_versions_argument():
    # The premise of the two tests above: sending `features` to the old schema (or `feature`
    # to the new one) is an error, so the script must pick the argument by introspection.
    with FakeGitLab("old") as old, FakeGitLab("new") as new:
        for fake, wrong in ((old, {"features": ["DUO_CHAT"]}), (new, {"feature": "DUO_CHAT"})):
            with pytest.raises(Exception, match="Field is not defined"):
                fake.mutate("aiFeatureSettingUpdate", "AiFeatureSettingUpdateInput",
                            dict(wrong, provider="VENDORED"))
