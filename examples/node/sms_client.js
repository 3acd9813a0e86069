// A Node.js caller of yunpian.sms.v1.SmsService, loading protos/ directly (no generated code).
//
//   node examples/node/sms_client.js HOST:PORT send PHONE CODE [USAGE_TYPE]
//   node examples/node/sms_client.js HOST:PORT validate USAGE_TYPE
//
// A verification: the service makes the code and sends it; the user types it; you check it.
//   node examples/node/sms_client.js HOST:PORT start PHONE [USAGE_TYPE [REQUEST_ID]]
//   node examples/node/sms_client.js HOST:PORT check VERIFICATION_ID CODE
//   node examples/node/sms_client.js HOST:PORT check-number PHONE CODE [USAGE_TYPE]
//   node examples/node/sms_client.js HOST:PORT cancel VERIFICATION_ID
//
// Whether an SMS reached the phone, from YunPian's delivery report (the server must collect
// them: [delivery] mode "pull" or "push"; `serve --sandbox` pulls them from its sandbox):
//   node examples/node/sms_client.js HOST:PORT status MESSAGE_ID
//
// USAGE_TYPE is the proto's name, e.g. USAGE_TYPE_SIGN_IN (default USAGE_TYPE_GENERIC).
// Prints one JSON line: {"ok": true, "response": {...}} or {"ok": false, "code": <gRPC code>,
// "message": "...", "error_info": {"reason", "domain", "metadata"}} decoded from the rich status.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = path.join(__dirname, "..", "..", "protos");
const DEADLINE_MS = 10000;

const definition = protoLoader.loadSync("yunpian/sms/v1/sms_service.proto", {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
});
const { SmsService } = grpc.loadPackageDefinition(definition).yunpian.sms.v1;

// google.rpc.Status and ErrorInfo, the two messages needed to read the error details.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: { Any: { fields: { type_url: { type: "string", id: 1 }, value: { type: "bytes", id: 2 } } } },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: "int32", id: 1 },
                message: { type: "string", id: 2 },
                details: { rule: "repeated", type: "google.protobuf.Any", id: 3 },
              },
            },
            ErrorInfo: {
              fields: {
                reason: { type: "string", id: 1 },
                domain: { type: "string", id: 2 },
                metadata: { keyType: "string", type: "string", id: 3 },
              },
            },
          },
        },
      },
    },
  },
});
const Status = rpcTypes.lookupType("google.rpc.Status");
const ErrorInfo = rpcTypes.lookupType("google.rpc.ErrorInfo");
const ERROR_INFO_URL = "type.googleapis.com/google.rpc.ErrorInfo";

function errorInfoOf(error) {
  const [raw] = error.metadata ? error.metadata.get("grpc-status-details-bin") : [];
  if (!raw) return null;
  const status = Status.decode(raw);
  const packed = status.details.find((detail) => detail.type_url === ERROR_INFO_URL);
  return packed ? ErrorInfo.toObject(ErrorInfo.decode(packed.value)) : null;
}

function call(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + DEADLINE_MS }, (error, response) => {
      if (error) {
        resolve({ ok: false, code: error.code, message: error.details, error_info: errorInfoOf(error) });
      } else {
        resolve({ ok: true, response });
      }
    });
  });
}

async function main(argv) {
  const [target, command, ...args] = argv;
  const client = new SmsService(target, grpc.credentials.createInsecure());
  let result;
  if (command === "send") {
    const [phone_number, code, usage_type = "USAGE_TYPE_GENERIC"] = args;
    result = await call(client, "SendCode", { phone_number, code, usage_type });
  } else if (command === "validate") {
    result = await call(client, "ValidateTemplate", { usage_type: args[0] });
  } else if (command === "start") {
    // With a request_id, a repeat answers with the same verification (replayed) and sends
    // nothing: the one safe way to retry a start whose outcome is unknown.
    const [phone_number, usage_type = "USAGE_TYPE_GENERIC", request_id = ""] = args;
    result = await call(client, "StartVerification", { phone_number, usage_type, request_id });
  } else if (command === "check") {
    // A wrong code is not an error: approved is false and checks_remaining says what is left.
    const [verification_id, code] = args;
    result = await call(client, "CheckVerification", { verification_id, code });
  } else if (command === "check-number") {
    const [phone_number, code, usage_type = "USAGE_TYPE_GENERIC"] = args;
    result = await call(client, "CheckVerification", { phone_number, usage_type, code });
  } else if (command === "cancel") {
    result = await call(client, "CancelVerification", { verification_id: args[0] });
  } else if (command === "status") {
    // Every state is an answer: DELIVERY_STATE_PENDING (no report yet), _DELIVERED, _FAILED
    // (carrier_code, carrier_detail say why) or _UNKNOWN. An unknown id is NOT_FOUND.
    result = await call(client, "GetDeliveryStatus", { message_id: args[0] });
  } else {
    throw new Error(
      `unknown command ${command}: use send, validate, start, check, check-number, cancel or status`,
    );
  }
  client.close();
  process.stdout.write(JSON.stringify(result) + "\n");
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(2);
});
