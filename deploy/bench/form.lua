-- wrk script: a 1 KB urlencoded contact-form post, the same body every time.
local message = string.rep("Where is my order? It was due last week. ", 23)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "email=ann%40example.com&name=Ann+Example&message=" .. message:gsub(" ", "+")
