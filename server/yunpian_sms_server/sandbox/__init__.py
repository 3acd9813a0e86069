"""A faithful local fake of YunPian's HTTP API (aiohttp.web), plus control endpoints for tests.

It serves `POST /v2/sms/single_send.json`, `/v2/sms/pull_status.json`, `/v2/tpl/get.json` and
`/v2/user/get.json` with the shapes and error bodies of YunPian's API: it checks the API key and
the mobile number, matches the text against its approved templates (code 5 when none matches),
enforces YunPian's default per-number limits, records every accepted message, reports its
delivery (pulled, or pushed to the send's callback_url) and lets a test inject faults. It depends
on nothing of the server. One concept a module, each using only those listed before it:

* template_matching: how a text matches a template body's `#name#` variables, in linear time;
* json_input: SandboxInputError and the checks of the JSON a template, fault or request is given;
* yunpian_wire: YunPian's API paths, JSON bodies and error body (each code's msg and detail);
* templates: SandboxTemplate and how a sent text matches one, signature or not;
* per_number_limits: YunPian's per-number limits and the send history they judge by;
* faults: Fault (its kinds), the pending faults and the answers they make;
* delivery_reports: ReportSettings (delay, FAIL rule, carrier codes, retries), the reports
  waiting to be pulled or pushed, and ReportStats;
* account: the fake account's state (templates, accepted messages, reports, limits, faults);
* fake_api: FakeYunpianApi, the `/v2/` API with its order of checks;
* control_api: ControlApi, the `/sandbox/*` endpoints and `/healthz`;
* report_push: ReportPusher, the task that POSTs due reports to callback URLs, with retries;
* serving: Sandbox (the account with its aiohttp app), start_sandbox and RunningSandbox.
"""

from yunpian_sms_server.sandbox.account import FIRST_SID, SANDBOX_API_KEY
from yunpian_sms_server.sandbox.delivery_reports import (
    DeliveryReport,
    ReportSettings,
    ReportStats,
)
from yunpian_sms_server.sandbox.faults import Fault
from yunpian_sms_server.sandbox.json_input import SandboxInputError
from yunpian_sms_server.sandbox.serving import RunningSandbox, Sandbox, start_sandbox
from yunpian_sms_server.sandbox.templates import (
    DEFAULT_SIGNATURE,
    MAX_TEMPLATE_CHARS,
    SandboxTemplate,
)
from yunpian_sms_server.sandbox.yunpian_wire import (
    PULL_STATUS_PATH,
    SINGLE_SEND_PATH,
    TPL_GET_PATH,
    USER_GET_PATH,
)

__all__ = [
    "DEFAULT_SIGNATURE",
    "FIRST_SID",
    "MAX_TEMPLATE_CHARS",
    "PULL_STATUS_PATH",
    "SANDBOX_API_KEY",
    "SINGLE_SEND_PATH",
    "TPL_GET_PATH",
    "USER_GET_PATH",
    "DeliveryReport",
    "Fault",
    "ReportSettings",
    "ReportStats",
    "RunningSandbox",
    "Sandbox",
    "SandboxInputError",
    "SandboxTemplate",
    "start_sandbox",
]
