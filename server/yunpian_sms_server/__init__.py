"""yunpian-sms: a gRPC service that sends SMS verification codes through YunPian."""
