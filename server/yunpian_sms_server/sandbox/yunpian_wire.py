"""YunPian's HTTP API as the wire shows it: its paths, its JSON bodies, its error body per code."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final

from aiohttp import web

SINGLE_SEND_PATH: Final = "/v2/sms/single_send.json"
TPL_GET_PATH: Final = "/v2/tpl/get.json"
USER_GET_PATH: Final = "/v2/user/get.json"
PULL_STATUS_PATH: Final = "/v2/sms/pull_status.json"
API_PATHS: Final = (SINGLE_SEND_PATH, TPL_GET_PATH, USER_GET_PATH, PULL_STATUS_PATH)

# YunPian's `msg` per code (its error code table), so an injected code reads like the real thing.
# Code 33 really answers with a null msg and the text only in `detail`.
MESSAGES: Final[Mapping[int, str | None]] = {
    1: "请求参数缺失",
    2: "请求参数格式错误",
    3: "账户余额不足",
    4: "关键词屏蔽",
    5: "未找到匹配的模板",
    6: "添加模板失败",
    7: "模板不可用",
    8: "同一手机号30秒内重复提交相同的内容",
    9: "同一手机号5分钟内重复提交相同的内容超过3次",
    10: "手机号防骚扰名单过滤",
    11: "接口不支持GET方式调用",
    12: "接口不支持POST方式调用",
    13: "营销短信暂停发送",
    14: "解码失败",
    15: "签名不匹配",
    16: "签名格式不正确",
    17: "24小时内同一手机号发送次数超过限制",
    18: "签名校验失败",
    19: "请求已失效",
    20: "不支持的国家地区",
    21: "解密失败",
    22: "1小时内同一手机号发送次数超过限制",
    23: "号码归属地不在模板可发送的地区内",
    24: "添加告警设置失败",
    25: "手机号和内容个数不匹配",
    26: "流量包错误",
    27: "未开通金额计费",
    28: "运营商错误",
    33: None,
    34: "签名创建失败",
    40: "未开启白名单",
    43: "一天内同一手机号发送次数超过限制",
    48: "参数长度超过限制",
    52: "关键词屏蔽",
    53: "手机号接收超过频率限制",
    55: "服务已下线",
    56: "手机号码格式不正确",
    58: "短信内容变量参数格式错误",
    60: "模版已失效",
    -1: "非法的apikey",
    -2: "API没有权限",
    -3: "IP没有权限",
    -4: "访问次数超限",
    -5: "访问频率超限",
    -6: "不支持批量发送",
    -7: "HTTP请求错误",
    -8: "不支持流量业务",
    -11: "用户未开启该功能",
    -50: "未知异常",
    -51: "系统繁忙",
    -52: "充值失败",
    -53: "提交短信失败",
    -54: "记录已经存在",
    -55: "记录不存在",
    -56: "赠送失败",
    -57: "用户开通过固定签名功能，但签名未设置",
    -62: "无效资质信息",
}
UNKNOWN_CODE_MESSAGE: Final = "未知错误"
# Details where YunPian's differ from the msg (used for the sandbox's own refusals and injected
# codes); `{mobile}` is the request's mobile value. An injected 2 is about the mobile, as the one
# recorded answer is.
DETAILS: Final[Mapping[int, str]] = {
    -1: "请检查的apikey是否正确",
    2: "参数 mobile 格式不正确，mobile:{mobile}",
    5: "未自动匹配到合适的模板",
    17: "验证码类短信24小时内同一手机号发送次数不能超过10次",
    22: "验证码类短信1小时内同一手机号发送次数不能超过3次",
    33: "号码：{mobile}, 超过频率，同一个手机号同一验证码模板每30秒只能发送一条",
}


class ApiError(Exception):
    """A YunPian refusal: HTTP 400 with `{"http_status_code", "code", "msg", "detail"}`.

    Without a detail of its own, the detail is YunPian's for that code (DETAILS, else the msg),
    with `mobile` in place of `{mobile}`.
    """

    def __init__(self, code: int, detail: str | None = None, *, mobile: str = "") -> None:
        super().__init__(code)
        self.code = code
        if detail is None:
            default = DETAILS.get(code) or MESSAGES.get(code) or UNKNOWN_CODE_MESSAGE
            detail = default.replace("{mobile}", mobile)
        self.detail = detail

    def response(self) -> web.Response:
        """The HTTP 400 answer with YunPian's error body."""
        body = {
            "http_status_code": HTTPStatus.BAD_REQUEST.value,
            "code": self.code,
            "msg": MESSAGES.get(self.code, UNKNOWN_CODE_MESSAGE),
            "detail": self.detail,
        }
        return json_response(body, status=HTTPStatus.BAD_REQUEST)


def json_response(body: object, status: int = HTTPStatus.OK) -> web.Response:
    """A JSON answer as YunPian writes it: UTF-8, Chinese text not escaped."""
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
        charset="utf-8",
    )
