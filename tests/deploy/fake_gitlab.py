"""A fake GitLab for configure-gitlab.sh: GET /api/v4/version, POST /api/graphql, GET and PUT
/api/v4/application/settings, and POST /api/v4/code_suggestions/direct_access (what an IDE asks).

It answers the queries the script makes from in-memory state, validates every mutation's input
against one of two schema versions the way GraphQL would (unknown or missing fields, bad enum
values), applies it, and records it. `old` is GitLab 17.6-like: aiFeatureSettingUpdate takes
`feature` (one) and models have no `identifier`; `new` (17.10-like) takes `features` (a list),
has identifiers, keeps the AI gateway's URL in its Duo settings (duoSettingsUpdate, 17.9+) and
has Duo Chat's sub-features.

GitLab's licensing rules, as 17.6's sources have them:
- every self-hosted model query and mutation is refused (`check_feature_access!`) unless a Duo
  Enterprise add-on purchase exists; Duo Pro (CODE_SUGGESTIONS) does not count, since only
  duo_enterprise bundles self_hosted_models (ee/config/cloud_connector/access_data.yml);
- a licence's add-ons become purchases only when provisioned: `provisioned=False` hides them
  until provision() runs (POST /fake/provision, which the tests' `gitlab-rails` stand-in calls).

Direct connections, as ee/lib/api/code_suggestions.rb and the settings API have them:
- POST /api/v4/code_suggestions/direct_access answers 403 "Direct connections are disabled"
  when the application setting disabled_direct_code_suggestions is true; otherwise 201 with
  base_url = the AI gateway's URL (Gitlab::AiGateway.url: AI_GATEWAY_URL, a private address);
- PUT /api/v4/application/settings takes disabled_direct_code_suggestions only on an instance
  with code suggestions among its add-ons (Duo Pro or Enterprise); elsewhere GitLab drops the
  parameter and still answers 200. `direct_setting_dropped=True` makes it drop it regardless.
"""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

BASE_FEATURES = ["CODE_GENERATIONS", "CODE_COMPLETIONS", "DUO_CHAT"]
CHAT_SUB_FEATURES = ["DUO_CHAT_EXPLAIN_CODE", "DUO_CHAT_TROUBLESHOOT_JOB", "DUO_CHAT_FIX_CODE",
                     "DUO_CHAT_WRITE_TESTS", "DUO_CHAT_REFACTOR_CODE"]
FEATURES = {"old": BASE_FEATURES, "new": BASE_FEATURES + CHAT_SUB_FEATURES}
VERSIONS = {"old": "17.6.8-ee", "new": "17.10.1-ee"}
NO_ACCESS = ("The resource that you are attempting to access does not exist or you don't have "
             "permission to perform this action")
PROVIDERS = ["DISABLED", "VENDORED", "SELF_HOSTED"]
MODELS = ["MISTRAL", "MIXTRAL", "CODEGEMMA", "CODESTRAL", "CODELLAMA", "DEEPSEEKCODER"]
MODEL_GID = "gid://gitlab/Ai::SelfHostedModel/"
ROOT_GID = "gid://gitlab/User/1"

# input type -> (required fields, optional fields), per schema version
INPUTS = {
    "old": {
        "AiFeatureSettingUpdateInput": ({"feature", "provider"}, {"aiSelfHostedModelId", "clientMutationId"}),
        "AiSelfHostedModelCreateInput": ({"name", "model", "endpoint"}, {"apiToken", "clientMutationId"}),
        "AiSelfHostedModelUpdateInput": ({"id", "name", "model", "endpoint"}, {"apiToken", "clientMutationId"}),
    },
    "new": {
        "AiFeatureSettingUpdateInput": ({"features", "provider"},
                                        {"aiSelfHostedModelId", "offeredModelRef", "clientMutationId"}),
        "AiSelfHostedModelCreateInput": ({"name", "model", "endpoint"},
                                         {"apiToken", "identifier", "clientMutationId"}),
        "AiSelfHostedModelUpdateInput": ({"id", "name", "model", "endpoint"},
                                         {"apiToken", "identifier", "clientMutationId"}),
    },
}
for version in INPUTS.values():
    version["UserAddOnAssignmentCreateInput"] = ({"addOnPurchaseId", "userId"}, {"clientMutationId"})
INPUTS["new"]["DuoSettingsUpdateInput"] = (set(), {"aiGatewayUrl", "duoCoreFeaturesEnabled", "clientMutationId"})
MUTATION_INPUT = {
    "aiSelfHostedModelCreate": "AiSelfHostedModelCreateInput",
    "aiSelfHostedModelUpdate": "AiSelfHostedModelUpdateInput",
    "aiFeatureSettingUpdate": "AiFeatureSettingUpdateInput",
    "userAddOnAssignmentCreate": "UserAddOnAssignmentCreateInput",
    "duoSettingsUpdate": "DuoSettingsUpdateInput",
}
# Add-ons that include code suggestions (the complete_code unit primitive).
CODE_SUGGESTIONS_ADD_ONS = ("CODE_SUGGESTIONS", "DUO_ENTERPRISE")
# GitLab's AI_GATEWAY_URL on the deployment: what direct_access hands an IDE.
AI_GATEWAY_URL = "http://10.42.1.11:5052"
# What check_feature_access! guards: nothing about self-hosted models without Duo Enterprise.
SELF_HOSTED_QUERIES = ("aiSelfHostedModels", "aiFeatureSettings")
SELF_HOSTED_MUTATIONS = ("aiSelfHostedModelCreate", "aiSelfHostedModelUpdate", "aiFeatureSettingUpdate")


class GraphQLError(Exception):
    pass


class FakeGitLab:
    def __init__(self, schema, token="test-token", unavailable_for=0, add_ons=("DUO_ENTERPRISE",),
                 provisioned=True, version=None):
        self.schema = schema
        self.token = token
        self.version = version or VERSIONS[schema]
        self.unavailable_for = unavailable_for  # first N /api/v4/version calls answer 502
        self.models = []
        self.settings = {}  # feature (lower case) -> (provider, model gid or None)
        self.gateway_url = None  # the Duo setting (17.9+)
        # The licence's add-ons; they are purchases once provisioned.
        self.licensed = [{"id": f"gid://gitlab/GitlabSubscriptions::AddOnPurchase/{i + 1}", "name": name,
                          "purchasedQuantity": 5} for i, name in enumerate(add_ons)]
        self.purchases = list(self.licensed) if provisioned else []
        self.purchase_queries = 0
        self.assigned = set()  # (purchase gid, user gid)
        self.fail_mutation = None  # a mutation name whose payload reports an error
        self.mutations = []  # (name, input) in the order received
        self.version_calls = 0
        self.disabled_direct_code_suggestions = False
        self.direct_setting_dropped = False
        self.setting_updates = []  # the PUT /application/settings bodies, in order
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # --- state helpers used by the tests ---
    def add_model(self, name, endpoint, identifier=None, api_token="x"):
        gid = f"{MODEL_GID}{len(self.models) + 1}"
        self.models.append({"id": gid, "name": name, "model": "mistral", "endpoint": endpoint,
                            "identifier": identifier, "apiToken": api_token})
        return gid

    def mutation_names(self):
        return [name for name, _ in self.mutations]

    def provision(self):
        """What GitLab's Duo provisioning service does: the licence's add-ons become purchases."""
        with self.lock:
            self.purchases = list(self.licensed)

    def duo_enterprise(self):
        return any(p["name"] == "DUO_ENTERPRISE" for p in self.purchases)

    # --- GraphQL ---
    def graphql(self, query, variables):
        mutation = re.match(r"\s*mutation\s*\(\$input:\s*(\w+)!\)\s*\{\s*(\w+)\(input:\s*\$input\)", query)
        if mutation:
            return self.mutate(mutation.group(2), mutation.group(1), variables.get("input"))
        data = {}
        for alias, type_name in re.findall(r"(\w+):\s*__type\(name:\s*\"(\w+)\"\)", query):
            if type_name == "AiFeatures":
                data[alias] = {"enumValues": [{"name": f} for f in FEATURES[self.schema]]}
                continue
            if type_name == "AiSelfHostedModel":
                fields = ["id", "name", "model", "endpoint", "hasApiToken", "createdAt"]
                data[alias] = {"fields": [{"name": f} for f in fields + (["identifier"] if self.schema == "new" else [])]}
                continue
            required, optional = INPUTS[self.schema].get(type_name, (set(), set()))
            fields = sorted(required | optional)
            data[alias] = {"inputFields": [{"name": f} for f in fields]} if fields else None
        if any(q in query for q in SELF_HOSTED_QUERIES) and not self.duo_enterprise():
            raise GraphQLError(NO_ACCESS)
        if re.search(r"\bduoSettings\s*\{", query):
            if self.schema == "old":
                raise GraphQLError("Field 'duoSettings' doesn't exist on type 'Query'")
            data["duoSettings"] = {"aiGatewayUrl": self.gateway_url}
        if "aiSelfHostedModels" in query:
            if "identifier" in query and self.schema == "old":
                raise GraphQLError("Field 'identifier' doesn't exist on type 'AiSelfHostedModel'")
            nodes = []
            for m in self.models:
                node = {k: m[k] for k in ("id", "name", "model", "endpoint")}
                if self.schema == "new":
                    node["identifier"] = m["identifier"]
                if "hasApiToken" in query:
                    node["hasApiToken"] = bool(m["apiToken"])
                nodes.append(node)
            data["aiSelfHostedModels"] = {"nodes": nodes}
        if "aiFeatureSettings" in query:
            nodes = []
            for feature in FEATURES[self.schema]:
                provider, model = self.settings.get(feature.lower(), ("vendored", None))
                nodes.append({"feature": feature.lower(), "provider": provider,
                              "selfHostedModel": {"id": model} if model else None})
            data["aiFeatureSettings"] = {"nodes": nodes}
        if "currentUser" in query:
            data["currentUser"] = {"id": ROOT_GID, "username": "root"}
        if "addOnPurchases" in query:
            self.purchase_queries += 1
            data["addOnPurchases"] = [
                dict(p, assignedQuantity=sum(1 for a in self.assigned if a[0] == p["id"])) for p in self.purchases]
        if "selfManagedAddOnEligibleUsers" in query:
            kinds = {p["name"] for p in self.purchases}
            if variables.get("type") not in kinds:
                raise GraphQLError(f"no add-on purchase of type {variables.get('type')}")
            ids = variables["ids"]
            assignments = [{"addOnPurchase": {"name": p["name"]}} for p in self.purchases
                           if p["id"] in ids and (p["id"], ROOT_GID) in self.assigned]
            data["selfManagedAddOnEligibleUsers"] = {"nodes": [
                {"id": ROOT_GID, "username": "root", "addOnAssignments": {"nodes": assignments}}]}
        if not data:
            raise GraphQLError(f"fake GitLab does not know this query: {query}")
        return data

    def mutate(self, name, input_type, value):
        if MUTATION_INPUT.get(name) != input_type:
            raise GraphQLError(f"{name} takes {MUTATION_INPUT.get(name)}, not {input_type}")
        required, optional = INPUTS[self.schema][input_type]
        if not isinstance(value, dict):
            raise GraphQLError(f"Variable $input of type {input_type}! was provided invalid value")
        for key in value:
            if key not in required | optional:
                raise GraphQLError(f"Variable $input of type {input_type}! was provided invalid value for "
                                   f"{key} (Field is not defined on {input_type})")
        for key in required - set(value):
            raise GraphQLError(f"Variable $input of type {input_type}! was provided invalid value for "
                               f"{key} (Expected value to not be null)")
        if name in SELF_HOSTED_MUTATIONS and not self.duo_enterprise():
            raise GraphQLError(NO_ACCESS)
        self.mutations.append((name, value))
        if name == self.fail_mutation:
            return {name: {"errors": [f"{name} refused by the fake"]}}

        if name == "aiSelfHostedModelCreate":
            if value["model"] not in MODELS:
                raise GraphQLError(f"invalid AiAcceptedSelfHostedModels value {value['model']}")
            gid = self.add_model(value["name"], value["endpoint"], value.get("identifier"), value.get("apiToken"))
            return {name: {"errors": [], "selfHostedModel": {"id": gid}}}
        if name == "aiSelfHostedModelUpdate":
            model = next((m for m in self.models if m["id"] == value["id"]), None)
            if model is None:
                return {name: {"errors": ["Self-hosted model not found"]}}
            model.update(name=value["name"], model=value["model"].lower(), endpoint=value["endpoint"],
                         identifier=value.get("identifier"))
            if "apiToken" in value:
                model["apiToken"] = value["apiToken"]
            return {name: {"errors": []}}
        if name == "aiFeatureSettingUpdate":
            features = value["features"] if "features" in value else [value["feature"]]
            if not isinstance(features, list) or any(f not in FEATURES[self.schema] for f in features):
                raise GraphQLError(f"invalid AiFeatures value in {features}")
            if value["provider"] not in PROVIDERS:
                raise GraphQLError(f"invalid AiFeatureProviders value {value['provider']}")
            model = value.get("aiSelfHostedModelId")
            if value["provider"] == "SELF_HOSTED" and model not in [m["id"] for m in self.models]:
                return {name: {"errors": ["Self-hosted model can't be blank"]}}
            for f in features:
                self.settings[f.lower()] = (value["provider"].lower(), model)
            return {name: {"errors": []}}
        if name == "userAddOnAssignmentCreate":
            if value["addOnPurchaseId"] not in [p["id"] for p in self.purchases] or value["userId"] != ROOT_GID:
                raise GraphQLError("The resource that you are attempting to access does not exist")
            self.assigned.add((value["addOnPurchaseId"], value["userId"]))
            return {name: {"errors": []}}
        if name == "duoSettingsUpdate":
            self.gateway_url = value.get("aiGatewayUrl", self.gateway_url)
            return {name: {"errors": []}}
        raise GraphQLError(f"unknown mutation {name}")

    # --- REST: application settings and what an IDE is given ---
    def code_suggestions_available(self):
        return any(p["name"] in CODE_SUGGESTIONS_ADD_ONS for p in self.purchases)

    def application_settings(self):
        return {"signup_enabled": True, "disabled_direct_code_suggestions": self.disabled_direct_code_suggestions}

    def update_settings(self, params):
        self.setting_updates.append(params)
        if "disabled_direct_code_suggestions" in params:
            value = params["disabled_direct_code_suggestions"]
            if value not in ("true", "false"):
                return 400, {"error": "disabled_direct_code_suggestions is invalid"}
            if self.code_suggestions_available() and not self.direct_setting_dropped:
                self.disabled_direct_code_suggestions = value == "true"
        return 200, self.application_settings()

    def direct_access(self):
        if self.disabled_direct_code_suggestions:
            return 403, {"message": "403 Forbidden - Direct connections are disabled"}
        if not self.code_suggestions_available():
            return 401, {"message": "401 Unauthorized"}
        return 201, {"base_url": AI_GATEWAY_URL, "token": "instance-jwt", "expires_at": 1767225600,
                     "headers": {"X-Gitlab-Instance-Id": "fake"}}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send_json(self, status, body):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def authorized(self):
                return self.headers.get("Authorization") == f"Bearer {fake.token}"

            def do_GET(self):
                if self.path == "/api/v4/application/settings":
                    if not self.authorized():
                        return self.send_json(401, {"message": "401 Unauthorized"})
                    with fake.lock:
                        return self.send_json(200, fake.application_settings())
                if self.path != "/api/v4/version":
                    return self.send_json(404, {"message": "404 Not Found"})
                with fake.lock:
                    fake.version_calls += 1
                    if fake.version_calls <= fake.unavailable_for:
                        return self.send_json(502, {"message": "GitLab is not responding"})
                if not self.authorized():
                    return self.send_json(401, {"message": "401 Unauthorized"})
                self.send_json(200, {"version": fake.version})

            def do_PUT(self):
                if self.path != "/api/v4/application/settings":
                    return self.send_json(404, {"message": "404 Not Found"})
                if not self.authorized():
                    return self.send_json(401, {"message": "401 Unauthorized"})
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    params = {k: str(v).lower() for k, v in json.loads(raw).items()}
                else:
                    params = {k: v[-1] for k, v in parse_qs(raw).items()}
                with fake.lock:
                    status, body = fake.update_settings(params)
                self.send_json(status, body)

            def do_POST(self):
                if self.path == "/fake/provision":
                    fake.provision()
                    return self.send_json(200, {"provisioned": [p["name"] for p in fake.purchases]})
                if self.path == "/api/v4/code_suggestions/direct_access":
                    if not self.authorized():
                        return self.send_json(401, {"message": "401 Unauthorized"})
                    with fake.lock:
                        return self.send_json(*fake.direct_access())
                if self.path != "/api/graphql":
                    return self.send_json(404, {"message": "404 Not Found"})
                if not self.authorized():
                    return self.send_json(401, {"message": "401 Unauthorized"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    try:
                        data = fake.graphql(body["query"], body.get("variables") or {})
                    except GraphQLError as e:
                        return self.send_json(200, {"errors": [{"message": str(e)}]})
                self.send_json(200, {"data": data})

        return Handler
