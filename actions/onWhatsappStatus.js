// Runs for every status callback Twilio posts for an app whose WHATSAPP callback is
// "onWhatsappStatus". `vo` holds every posted field as a string, plus appId and companyId.
const status = vo.MessageStatus || vo.SmsStatus;
utils.info(`message ${vo.MessageSid} to ${vo.To} is ${status} (app ${vo.appId}, company ${vo.companyId})`);

if (status === "read") {
  utils.info(`${vo.To} read ${vo.MessageSid}`);
} else if (status === "failed" || status === "undelivered") {
  utils.log(`message ${vo.MessageSid} ${status} with error ${vo.ErrorCode || "unknown"}`, "ERROR");
}
