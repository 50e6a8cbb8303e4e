"""The mutation check of GitLab's rules: each rule the fake GitLab, the dry-run render or the
first-boot stand-ins model has a case, and breaking the deploy scripts' handling of that rule,
one rule at a time, makes its case fail. So every case can fail, and none passes for a reason
other than its rule.

Each mutant is a copy of deploy/ with one text replaced; the case runs against the copy.
"""
import os
import pathlib
import shutil
import subprocess
import threading

import pytest

from fake_gitlab import CHAT_SUB_FEATURES, FakeGitLab
from test_configure_gitlab import configure, ide_asks_for_direct_access, provision_duo
from test_dry_run import CUDA_URL, SHA, FakeHub, licence, write_files
from test_firstboot import gateway_boot, gitlab_boot, llm_boot

ROOT = pathlib.Path(__file__).resolve().parents[2]


# --- the cases: True when the rule holds ---

def refuses_without_duo_enterprise(deploy, tmp_path):
    with FakeGitLab("new", add_ons=()) as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return (result.returncode == 1 and "no GitLab Duo Enterprise add-on" in result.stderr
                and fake.mutations == [])


def duo_pro_does_not_count(deploy, tmp_path):
    with FakeGitLab("old", add_ons=("CODE_SUGGESTIONS",)) as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return (result.returncode == 1 and "Duo Pro does not include self-hosted models" in result.stderr
                and fake.mutations == [])


def waits_for_the_provisioned_add_on(deploy, tmp_path):
    with FakeGitLab("old", provisioned=False) as fake:
        results = {}
        waiting = threading.Thread(target=lambda: results.update(
            r=configure(fake, add_on_timeout="20", script=deploy / "configure-gitlab.sh")))
        waiting.start()
        # Provision once configure has asked twice (or has given up already).
        for _ in range(200):
            if fake.purchase_queries >= 2 or not waiting.is_alive():
                break
            threading.Event().wait(0.05)
        provision_duo(fake, tmp_path, script=deploy / "firstboot/provision-duo.sh")
        waiting.join()
        return results["r"].returncode == 0 and fake.mutation_names()[-1] == "userAddOnAssignmentCreate"


def provisioning_creates_the_purchase(deploy, tmp_path):
    with FakeGitLab("old", provisioned=False) as fake:
        result = provision_duo(fake, tmp_path, script=deploy / "firstboot/provision-duo.sh")
        return result.returncode == 0 and [p["name"] for p in fake.purchases] == ["DUO_ENTERPRISE"]


def sets_the_gateway_url_on_17_9(deploy, tmp_path):
    with FakeGitLab("new") as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return result.returncode == 0 and fake.gateway_url == "http://10.42.1.11:5052"


def sets_duo_chat_sub_features_on_17_9(deploy, tmp_path):
    with FakeGitLab("new") as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return result.returncode == 0 and all(f.lower() in fake.settings for f in CHAT_SUB_FEATURES)


def refuses_gitlab_before_17_6(deploy, tmp_path):
    with FakeGitLab("old", version="17.5.3-ee") as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return result.returncode == 1 and "too old" in result.stderr and fake.mutations == []


def dry_run(deploy, tmp_path, *extra):
    hub = FakeHub()
    try:
        render = tmp_path / "render"
        env = dict(os.environ, FERROLLAMA_GATEWAY_TAGS_URL=hub.url, HOME=str(tmp_path))
        return subprocess.run([str(deploy / "up.sh"), "--cloud", "gcp", "--domain", "gitlab.example.com",
                               "--ferrollama-url", CUDA_URL, "--ferrollama-sha256", SHA, "--dry-run",
                               "--render-dir", str(render), *extra],
                              env=env, capture_output=True, text=True, timeout=60), render
    finally:
        hub.close()


def ides_are_refused_direct_access(deploy, tmp_path):
    with FakeGitLab("new") as fake:
        result = configure(fake, script=deploy / "configure-gitlab.sh")
        return result.returncode == 0 and ide_asks_for_direct_access(fake)[0] == 403


def gateway_boot_passes_with_a_real_like_gateway(deploy, tmp_path):
    result, paths, _ = gateway_boot(tmp_path, healthy=True, firstboot=deploy / "firstboot")
    return result.returncode == 0 and "/monitoring/ready" not in paths


def gitlab_gets_its_newest_patch(deploy, tmp_path):
    result, log = gitlab_boot(tmp_path, "17.6", firstboot=deploy / "firstboot")
    return result.returncode == 0 and "apt-get -o DPkg::Lock::Timeout=600 install -y gitlab-ee=17.6.10-ee.0" in log


def gitlab_waits_for_egress_before_apt(deploy, tmp_path):
    result, log = gitlab_boot(tmp_path, "17.6", unreachable=2, firstboot=deploy / "firstboot")
    probes = [i for i, c in enumerate(log) if c.startswith("curl -sS -o /dev/null")]
    first_apt = next(i for i, c in enumerate(log) if c.startswith("apt-get"))
    return result.returncode == 0 and len(probes) == 3 and probes[-1] < first_apt


def llm_refuses_a_newer_glibc(deploy, tmp_path):
    result, root, _, _ = llm_boot(tmp_path, "build=cpu\nglibc=2.40\n", firstboot=deploy / "firstboot")
    return result.returncode == 1 and not (root / "opt").exists()


def ec2_user_data_fits_with_a_licence(deploy, tmp_path):
    hub = FakeHub()
    try:
        render = tmp_path / "render"
        env = dict(os.environ, FERROLLAMA_GATEWAY_TAGS_URL=hub.url, HOME=str(tmp_path))
        result = subprocess.run([str(deploy / "up.sh"), "--cloud", "aws", "--domain", "gitlab.example.com",
                                 "--ferrollama-url", CUDA_URL, "--ferrollama-sha256", SHA, "--dry-run",
                                 "--license", str(licence(tmp_path)), "--render-dir", str(render)],
                                env=env, capture_output=True, text=True, timeout=60)
    finally:
        hub.close()
    user_data = [line.split("--user-data ")[1].split()[0] for line in result.stdout.splitlines() if "run-instances" in line]
    return (result.returncode == 0 and len(user_data) == 3
            and all(os.path.getsize(u.split("://", 1)[1]) <= 16384 for u in user_data))


def up_refuses_gitlab_before_17_6(deploy, tmp_path):
    result, _ = dry_run(deploy, tmp_path, "--gateway-tag", "self-hosted-v17.5")
    return result.returncode == 2 and "too old" in result.stderr


def rendered(deploy, tmp_path, role):
    """A role's cloud-init files from a default dry run, or None when the dry run fails."""
    result, render = dry_run(deploy, tmp_path)
    return write_files(render / f"{role}.yaml") if result.returncode == 0 else None


def gateway_reaches_gitlab_privately(deploy, tmp_path):
    files = rendered(deploy, tmp_path, "gateway")
    return files is not None and ('--add-host "$DOMAIN:$GITLAB_IP"' in files["/usr/local/sbin/ferrollama-firstboot"]
                                  and "GITLAB_IP=10.42.0.10" in files["/etc/ferrollama-deploy/settings.env"])


def llm_role_takes_the_cuda_build(deploy, tmp_path):
    files = rendered(deploy, tmp_path, "llm")
    return files is not None and ("FERROLLAMA_BUILD=cuda-sm75" in files["/etc/ferrollama-deploy/settings.env"]
                                  and "libcublas-13-0" in files["/usr/local/sbin/ferrollama-firstboot"])


# --- the mutants: (file in deploy/, text, replacement), each breaking one rule ---

MUTANTS = {
    "no wait for Duo Enterprise": (
        refuses_without_duo_enterprise, "configure-gitlab.sh",
        '[ "$purchase" = null ] || break', 'break'),
    "Duo Pro accepted as before": (
        duo_pro_does_not_count, "configure-gitlab.sh",
        'select(.name == "DUO_ENTERPRISE")][0]\' <<<"$seats"',
        'select(.name == "DUO_ENTERPRISE")][0] // [.addOnPurchases[]? | select(.name == "CODE_SUGGESTIONS")][0]\' <<<"$seats"'),
    "no bounded wait for the purchase": (
        waits_for_the_provisioned_add_on, "configure-gitlab.sh",
        'deadline=$((SECONDS + add_on_timeout))', 'deadline=$SECONDS'),
    "provisioning runs no service": (
        provisioning_creates_the_purchase, "firstboot/provision-duo.sh",
        'GitlabSubscriptions::AddOnPurchases::SelfManaged::ProvisionServices::Duo.new.execute',
        'ServiceResponse.success'),
    "no duoSettingsUpdate": (
        sets_the_gateway_url_on_17_9, "configure-gitlab.sh",
        'if has_field duoSettingsInput aiGatewayUrl; then', 'if false; then'),
    "no Duo Chat sub-features": (
        sets_duo_chat_sub_features_on_17_9, "configure-gitlab.sh",
        'DUO_CHAT "${chat_features[@]}"', 'DUO_CHAT'),
    "no version check in configure": (
        refuses_gitlab_before_17_6, "configure-gitlab.sh",
        'die "GitLab $version is too old', 'say "GitLab $version is too old'),
    "no version check in up.sh": (
        up_refuses_gitlab_before_17_6, "up.sh",
        'usage_error "GitLab $tag_minor is too old', 'warn "GitLab $tag_minor is too old'),
    "gateway through NAT": (
        gateway_reaches_gitlab_privately, "firstboot/gateway.sh",
        '  --add-host "$DOMAIN:$GITLAB_IP" \\\n', ''),
    "CPU build on the GPU VM": (
        llm_role_takes_the_cuda_build, "up.sh",
        'ferrollama_build="cuda-sm${BASH_REMATCH[1]}"', 'ferrollama_build=cpu'),
    "direct connections left on": (
        ides_are_refused_direct_access, "configure-gitlab.sh",
        'if [ "$direct" = true ]; then', 'if true; then'),
    "gateway boot waits for /monitoring/ready": (
        gateway_boot_passes_with_a_real_like_gateway, "firstboot/gateway.sh",
        '"http://$GATEWAY_IP:$GATEWAY_PORT/monitoring/healthz" >/dev/null',
        '"http://$GATEWAY_IP:$GATEWAY_PORT/monitoring/ready" >/dev/null'),
    "GitLab patch by string order": (
        gitlab_gets_its_newest_patch, "firstboot/gitlab.sh", '| sort -V | tail -n 1)"', '| sort | tail -n 1)"'),
    "apt before the route out": (
        gitlab_waits_for_egress_before_apt, "firstboot/gitlab.sh",
        'curl -sS -o /dev/null --max-time 10 https://packages.gitlab.com/ && break', 'break'),
    "no glibc check": (
        llm_refuses_a_newer_glibc, "firstboot/llm.sh",
        'if [ "$(printf \'%s\\n\' "$needed" "$have" | sort -V | tail -n 1)" != "$have" ]; then', 'if false; then'),
    "EC2 user data not gzipped": (
        ec2_user_data_fits_with_a_licence, "up.sh",
        '--user-data "fileb://$render_dir/$1.yaml.gz"', '--user-data "file://$render_dir/$1.yaml"'),
}


def deploy_copy(tmp_path, mutant=None):
    deploy = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", deploy, ignore=shutil.ignore_patterns("helm"))
    if mutant:
        _, file, text, replacement = MUTANTS[mutant]
        path = deploy / file
        source = path.read_text()
        assert source.count(text) == 1, f"mutant '{mutant}': the text is not in {file} exactly once"
        path.write_text(source.replace(text, replacement))
    return deploy


@pytest.mark.parametrize("mutant", MUTANTS)
def test_each_rule_holds_and_breaking_it_fails_its_case(tmp_path, mutant):
    case = MUTANTS[mutant][0]
    (tmp_path / "intact").mkdir()
    (tmp_path / "mutant").mkdir()
    assert case(deploy_copy(tmp_path / "intact"), tmp_path / "intact"), f"{case.__name__} fails on deploy/ itself"
    assert not case(deploy_copy(tmp_path / "mutant", mutant), tmp_path / "mutant"), \
        f"{case.__name__} still passes with '{mutant}'"
