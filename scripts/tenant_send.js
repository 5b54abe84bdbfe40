// Sends with a tenant's own Twilio credentials, in the tenant forms:
//   whatsapp-host run scripts/tenant_send.js --app demo --company ACME
const tenant = {
  accountId: "AC11111111111111111111111111111111",
  secretKey: "tenant-auth-token",
  from: "+14155238886",
};

// (accountId, secretKey, fromNr, to, message[, publicMediaURL])
const text = JSON.parse(utils.sendWhatsappMessage(
  tenant.accountId, tenant.secretKey, tenant.from, "0039 333 123 4567", "Hello from your tenant account"));
utils.info(`tenant message ${text.sid} is ${text.status}`);

// (accountId, secretKey, fromNr, to, message, bucketName, fileName); needs [gcs] and the bucket
// in the app's gcs_buckets:
// utils.sendWhatsappMessage(tenant.accountId, tenant.secretKey, tenant.from, "3331234567",
//   "Your contract", "acme-contracts", "contract-7.pdf");

text.sid;
