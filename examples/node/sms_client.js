// A Node.js caller of yunpian.sms.v1.SmsService, loading protos/ directly (no generated code).
//
//   node examples/node/sms_client.js HOST:PORT send PHONE CODE [USAGE_TYPE]
//   node examples/node/sms_client.js HOST:PORT validate USAGE_TYPE
//
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
  } else {
    throw new Error(`unknown command ${command}: use send or validate`);
  }
  client.close();
  process.stdout.write(JSON.stringify(result) + "\n");
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`${error.stack}\n`);
  process.exit(2);
});
